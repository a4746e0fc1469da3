#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

extern char **environ;

typedef enum { T_STR, T_INT, T_ENUM } ktype;

static const struct {
    const char *name;
    ktype type;
    const char *def_str;
    int64_t def_num, min, max;
    const char *choices; /* enum: '|'-separated */
} schema[TK_CFG_COUNT] = {
    [TK_CFG_STORE] = {"store", T_ENUM, "memory", 0, 0, 0, "memory|postgres"},
    [TK_CFG_DATABASE_URL] = {"database.url", T_STR, "", 0, 0, 0, NULL},
    [TK_CFG_TEMPLATE_MAX_JSON_BYTES] = {"template.max_json_bytes", T_INT, NULL, 16777216, 64,
                                        1073741824, NULL},
    [TK_CFG_TEMPLATE_MAX_STEPS] = {"template.max_steps", T_INT, NULL, 1000000, 1, 10000000,
                                   NULL},
    [TK_CFG_TASK_MAX_CONTEXT_BYTES] = {"task.max_context_bytes", T_INT, NULL, 16777216, 2,
                                       1073741824, NULL},
    [TK_CFG_MEMORY_RETAIN_FINISHED] = {"memory.retain_finished", T_INT, NULL, 0, 0,
                                       1000000000, NULL},
    [TK_CFG_PG_LEASE_MS] = {"postgres.lease_ms", T_INT, NULL, 30000, 100, 86400000, NULL},
    [TK_CFG_PG_POLL_MS] = {"postgres.poll_ms", T_INT, NULL, 1000, 1, 3600000, NULL},
    [TK_CFG_PG_CLAIM_BATCH] = {"postgres.claim_batch", T_INT, NULL, 64, 1, 10000, NULL},
    [TK_CFG_PG_FLUSH_MAX] = {"postgres.flush_max", T_INT, NULL, 256, 1, 100000, NULL},
    [TK_CFG_PG_ASYNC_COMPLETE] = {"postgres.async_complete", T_ENUM, "false", 0, 0, 0,
                                  "true|false"},
    [TK_CFG_PG_NAMESPACES] = {"postgres.namespaces", T_STR, "", 0, 0, 0, NULL},
    [TK_CFG_METRICS_ENABLED] = {"metrics.enabled", T_ENUM, "true", 0, 0, 0, "true|false"},
    [TK_CFG_LOG_LEVEL] = {"log.level", T_ENUM, "off", 0, 0, 0, "off|error|warn|info|debug"},
    [TK_CFG_LOG_SINK] = {"log.sink", T_STR, "stderr", 0, 0, 0, NULL},
    [TK_CFG_BREAKER_FAILURE_THRESHOLD] = {"breaker.failure_threshold", T_INT, NULL, 0, 0,
                                          1000000, NULL},
    [TK_CFG_BREAKER_FAILURE_RATE_PERCENT] = {"breaker.failure_rate_percent", T_INT, NULL, 0, 0,
                                             100, NULL},
    [TK_CFG_BREAKER_WINDOW] = {"breaker.window", T_INT, NULL, 20, 1, 10000, NULL},
    [TK_CFG_BREAKER_OPEN_MS] = {"breaker.open_ms", T_INT, NULL, 30000, 1, 86400000, NULL},
    [TK_CFG_BREAKER_HALF_OPEN_MAX] = {"breaker.half_open_max", T_INT, NULL, 1, 1, 1000, NULL},
    [TK_CFG_BREAKER_SUCCESS_THRESHOLD] = {"breaker.success_threshold", T_INT, NULL, 1, 1, 1000,
                                          NULL},
};

void tk_config_defaults(struct tasker_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (int k = 0; k < TK_CFG_COUNT; k++)
        cfg->num[k] = schema[k].def_num;
}

const char *tk_config_str(const struct tasker_config *cfg, tk_cfg_key key)
{
    return cfg->str[key] ? cfg->str[key] : schema[key].def_str;
}

void tk_config_clear(struct tasker_config *cfg)
{
    for (int k = 0; k < TK_CFG_COUNT; k++)
        tk_free(cfg->str[k]);
    tk_config_defaults(cfg);
}

int tk_config_copy(struct tasker_config *dst, const struct tasker_config *src)
{
    tk_config_defaults(dst);
    for (int k = 0; k < TK_CFG_COUNT; k++) {
        dst->num[k] = src->num[k];
        if (src->str[k] && !(dst->str[k] = tk_strdup(src->str[k]))) {
            tk_config_clear(dst);
            return tk_enomem();
        }
    }
    return TASKER_OK;
}

int tasker_config_new(tasker_config **out)
{
    if (!out)
        return tk_einval("tasker_config_new: out is NULL");
    *out = tk_malloc(sizeof **out);
    if (!*out)
        return tk_enomem();
    tk_config_defaults(*out);
    return TASKER_OK;
}

void tasker_config_free(tasker_config *cfg)
{
    if (!cfg)
        return;
    tk_config_clear(cfg);
    tk_free(cfg);
}

static int find_key(const char *key)
{
    for (int k = 0; k < TK_CFG_COUNT; k++)
        if (strcmp(schema[k].name, key) == 0)
            return k;
    return -1;
}

static int choice_ok(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0)
            return 1;
        p += len + (bar ? 1 : 0);
    }
    return 0;
}

/* Checks `value` for key `k`; on error writes a message into `why`. */
static int check_value(int k, const char *value, int64_t *num, char *why, size_t whylen)
{
    if (schema[k].type == T_INT) {
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        while (*end && isspace((unsigned char)*end))
            end++;
        if (errno || end == value || *end) {
            snprintf(why, whylen, "'%s' is not an integer; allowed %lld..%lld", value,
                     (long long)schema[k].min, (long long)schema[k].max);
            return -1;
        }
        if (v < schema[k].min || v > schema[k].max) {
            snprintf(why, whylen, "%lld is out of range; allowed %lld..%lld", v,
                     (long long)schema[k].min, (long long)schema[k].max);
            return -1;
        }
        *num = v;
    } else if (schema[k].type == T_ENUM && !choice_ok(schema[k].choices, value)) {
        snprintf(why, whylen, "'%s' is not allowed; allowed values: %s", value,
                 schema[k].choices);
        return -1;
    }
    return 0;
}

/* Applies a checked value. */
static int apply(tasker_config *cfg, int k, const char *value, int64_t num)
{
    if (schema[k].type == T_INT) {
        cfg->num[k] = num;
        return TASKER_OK;
    }
    char *copy = tk_strdup(value);
    if (!copy)
        return tk_enomem();
    tk_free(cfg->str[k]);
    cfg->str[k] = copy;
    return TASKER_OK;
}

int tasker_config_set(tasker_config *cfg, const char *key, const char *value)
{
    if (!cfg || !key || !value)
        return tk_einval("tasker_config_set: cfg, key and value must not be NULL");
    int k = find_key(key);
    if (k < 0)
        return tk_err(TASKER_ECONFIG, TASKER_CATEGORY_CONFIG, json_pack("{s:s}", "key", key),
                      "unknown configuration key '%s'", key);
    char why[256];
    int64_t num = 0;
    if (check_value(k, value, &num, why, sizeof why) < 0)
        return tk_err(TASKER_ECONFIG, TASKER_CATEGORY_CONFIG,
                      json_pack("{s:s, s:s}", "key", key, "message", why),
                      "configuration key '%s': %s", key, why);
    return apply(cfg, k, value, num);
}

int tasker_config_get(char **value_out, const tasker_config *cfg, const char *key)
{
    if (!value_out || !cfg || !key)
        return tk_einval("tasker_config_get: arguments must not be NULL");
    *value_out = NULL;
    int k = find_key(key);
    if (k < 0)
        return tk_err(TASKER_ECONFIG, TASKER_CATEGORY_CONFIG, json_pack("{s:s}", "key", key),
                      "unknown configuration key '%s'", key);
    char buf[32];
    const char *v;
    if (schema[k].type == T_INT) {
        snprintf(buf, sizeof buf, "%lld", (long long)cfg->num[k]);
        v = buf;
    } else {
        v = tk_config_str(cfg, (tk_cfg_key)k);
    }
    *value_out = tk_strdup(v);
    return *value_out ? TASKER_OK : tk_enomem();
}

/* Pending assignments collected from a file or the environment, applied
 * only when every one of them is valid. */
typedef struct {
    int key[TK_CFG_COUNT * 4];
    char *value[TK_CFG_COUNT * 4];
    int64_t num[TK_CFG_COUNT * 4];
    int n;
} batch;

static int batch_add(batch *b, json_t *errors, int k, const char *value, json_t *where)
{
    char why[256];
    int64_t num = 0;
    if (check_value(k, value, &num, why, sizeof why) < 0) {
        json_object_set_new(where, "key", json_string(schema[k].name));
        json_object_set_new(where, "message", json_string(why));
        json_array_append_new(errors, where);
        return 0;
    }
    json_decref(where);
    if (b->n == (int)(sizeof b->key / sizeof b->key[0])) {
        json_array_append_new(errors, json_pack("{s:s}", "message", "too many assignments"));
        return 0;
    }
    char *copy = tk_strdup(value);
    if (!copy)
        return -1;
    b->key[b->n] = k;
    b->value[b->n] = copy;
    b->num[b->n] = num;
    b->n++;
    return 0;
}

static int batch_finish(tasker_config *cfg, batch *b, json_t *errors, int nomem,
                        const char *source)
{
    int rc = TASKER_OK;
    if (nomem) {
        rc = tk_enomem();
    } else if (json_array_size(errors) > 0) {
        size_t n = json_array_size(errors);
        json_t *first = json_array_get(errors, 0);
        const char *msg = json_string_value(json_object_get(first, "message"));
        rc = tk_err(TASKER_ECONFIG, TASKER_CATEGORY_CONFIG,
                    json_pack("{s:s, s:O}", "source", source, "errors", errors),
                    "%zu configuration error(s) in %s; first: %s", n, source, msg ? msg : "?");
    } else {
        /* Apply on a copy so that an allocation failure changes nothing. */
        struct tasker_config tmp;
        if (tk_config_copy(&tmp, cfg) != TASKER_OK) {
            rc = TASKER_ENOMEM;
        } else {
            for (int i = 0; i < b->n && rc == TASKER_OK; i++)
                rc = apply(&tmp, b->key[i], b->value[i], b->num[i]);
            if (rc == TASKER_OK) {
                tk_config_clear(cfg);
                *cfg = tmp;
            } else {
                tk_config_clear(&tmp);
            }
        }
    }
    for (int i = 0; i < b->n; i++)
        tk_free(b->value[i]);
    json_decref(errors);
    return rc;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

int tasker_config_load_file(tasker_config *cfg, const char *path)
{
    if (!cfg || !path)
        return tk_einval("tasker_config_load_file: cfg and path must not be NULL");
    FILE *f = fopen(path, "r");
    if (!f)
        return tk_err(TASKER_ECONFIG, TASKER_CATEGORY_CONFIG,
                      json_pack("{s:s, s:s}", "path", path, "message", strerror(errno)),
                      "cannot read configuration file '%s': %s", path, strerror(errno));
    batch b = {.n = 0};
    json_t *errors = json_array();
    int nomem = errors == NULL;
    char line[8192];
    int lineno = 0;
    while (!nomem && fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            json_array_append_new(errors, json_pack("{s:i, s:s}", "line", lineno, "message",
                                                    "expected 'key = value'"));
            continue;
        }
        *eq = '\0';
        char *key = trim(s), *value = trim(eq + 1);
        size_t vl = strlen(value);
        if (vl >= 2 && value[0] == '"' && value[vl - 1] == '"') {
            value[vl - 1] = '\0';
            value++;
        }
        int k = find_key(key);
        if (k < 0) {
            json_array_append_new(errors, json_pack("{s:i, s:s, s:s}", "line", lineno, "key", key,
                                                    "message", "unknown key"));
            continue;
        }
        if (batch_add(&b, errors, k, value, json_pack("{s:i}", "line", lineno)) < 0)
            nomem = 1;
    }
    fclose(f);
    return batch_finish(cfg, &b, errors, nomem, path);
}

int tasker_config_load_env(tasker_config *cfg, const char *prefix)
{
    if (!cfg)
        return tk_einval("tasker_config_load_env: cfg is NULL");
    if (!prefix)
        prefix = "TASKER_";
    size_t plen = strlen(prefix);
    batch b = {.n = 0};
    json_t *errors = json_array();
    int nomem = errors == NULL;
    for (char **e = environ; !nomem && e && *e; e++) {
        if (strncmp(*e, prefix, plen) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        char var[256];
        size_t vlen = (size_t)(eq - *e);
        if (vlen >= sizeof var)
            vlen = sizeof var - 1;
        memcpy(var, *e, vlen);
        var[vlen] = '\0';
        int k = -1;
        for (int i = 0; i < TK_CFG_COUNT && k < 0; i++) {
            char want[256];
            size_t j = 0;
            for (const char *p = schema[i].name; *p && j < sizeof want - 1; p++)
                want[j++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
            want[j] = '\0';
            if (strcmp(var + plen, want) == 0)
                k = i;
        }
        if (k < 0) {
            json_array_append_new(errors, json_pack("{s:s, s:s}", "variable", var, "message",
                                                    "names no configuration key"));
            continue;
        }
        if (batch_add(&b, errors, k, eq + 1, json_pack("{s:s}", "variable", var)) < 0)
            nomem = 1;
    }
    return batch_finish(cfg, &b, errors, nomem, "environment");
}

int tasker_config_validate(const tasker_config *cfg)
{
    if (!cfg)
        return tk_einval("tasker_config_validate: cfg is NULL");
    const char *store = tk_config_str(cfg, TK_CFG_STORE);
    if (strcmp(store, "postgres") == 0 && !*tk_config_str(cfg, TK_CFG_DATABASE_URL))
        return tk_err(TASKER_ECONFIG, TASKER_CATEGORY_CONFIG,
                      json_pack("{s:[{s:s, s:s}]}", "errors", "key", "database.url", "message",
                                "required when store = postgres"),
                      "configuration: database.url is required when store = postgres");
    return TASKER_OK;
}
