#include "core/template.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/backoff.h"
#include "core/error.h"

#define DEFAULT_MAX_JSON 16777216u

static int terr(json_t *ctx, const char *fmt, const char *a, const char *b)
{
    return tk_err(TASKER_ETEMPLATE, TASKER_CATEGORY_TEMPLATE, ctx, fmt, a ? a : "", b ? b : "");
}

const char *tk_name_problem(const char *s, int allow_slash_at)
{
    if (!s)
        return "is missing";
    size_t n = strlen(s);
    if (n == 0)
        return "is empty";
    if (n > 255)
        return "is longer than 255 bytes";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return "contains a control character";
        if (!allow_slash_at && (c == '/' || c == '@'))
            return "contains '/' or '@'";
    }
    /* jansson refuses invalid UTF-8, which is exactly the check we need. */
    json_t *j = json_stringn(s, n);
    if (!j)
        return "is not valid UTF-8";
    json_decref(j);
    return NULL;
}

int tk_version_cmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (*a >= '0' && *a <= '9' && *b >= '0' && *b <= '9') {
            char *ea, *eb;
            unsigned long long x = strtoull(a, &ea, 10), y = strtoull(b, &eb, 10);
            if (x != y)
                return x < y ? -1 : 1;
            a = ea;
            b = eb;
        } else {
            if (*a != *b)
                return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++;
            b++;
        }
    }
    return *a ? 1 : *b ? -1 : 0;
}

int tasker_step_options_init(tasker_step_options *opts, unsigned version)
{
    if (!opts)
        return tk_einval("tasker_step_options_init: opts is NULL");
    if (version != TASKER_STEP_OPTIONS_VERSION)
        return tk_einval("tasker_step_options_init: unknown struct version %u (this library "
                         "knows %u)", version, TASKER_STEP_OPTIONS_VERSION);
    tasker_step_options d = TASKER_STEP_OPTIONS_INIT;
    *opts = d;
    return TASKER_OK;
}

int64_t tk_template_find(const tasker_template *t, const char *name)
{
    tk_name_ent *e;
    HASH_FIND_STR(t->index, name, e);
    return e ? (int64_t)e->idx : -1;
}

static void free_step(tk_tstep *s)
{
    tk_free(s->name);
    tk_free(s->handler);
    for (uint32_t i = 0; i < s->n_deps; i++)
        tk_free(s->deps[i]);
    tk_free(s->deps);
    tk_free(s->dep_idx);
    tk_free(s->dependents);
}

void tasker_template_free(tasker_template *t)
{
    if (!t)
        return;
    tk_name_ent *e, *tmp;
    HASH_ITER(hh, t->index, e, tmp) {
        HASH_DEL(t->index, e);
        tk_free(e);
    }
    for (uint32_t i = 0; i < t->n_steps; i++)
        free_step(&t->steps[i]);
    tk_free(t->steps);
    tk_free(t->roots);
    tk_free(t->ns);
    tk_free(t->name);
    tk_free(t->version);
    tk_free(t->key);
    tk_free(t);
}

int tasker_template_new(tasker_template **out, const char *ns, const char *name,
                        const char *version)
{
    if (!out)
        return tk_einval("tasker_template_new: out is NULL");
    *out = NULL;
    if (!ns || !name)
        return tk_einval("tasker_template_new: namespace and name must not be NULL");
    if (!version)
        version = "1";
    const char *why;
    if ((why = tk_name_problem(ns, 0)))
        return terr(json_pack("{s:s, s:s}", "reason", "bad_name", "field", "namespace"),
                    "template namespace %s%s", why, NULL);
    if ((why = tk_name_problem(name, 0)))
        return terr(json_pack("{s:s, s:s}", "reason", "bad_name", "field", "name"),
                    "template name %s%s", why, NULL);
    if ((why = tk_name_problem(version, 0)))
        return terr(json_pack("{s:s, s:s}", "reason", "bad_name", "field", "version"),
                    "template version %s%s", why, NULL);
    tasker_template *t = tk_calloc(1, sizeof *t);
    if (!t)
        return tk_enomem();
    size_t klen = strlen(ns) + strlen(name) + strlen(version) + 3;
    t->ns = tk_strdup(ns);
    t->name = tk_strdup(name);
    t->version = tk_strdup(version);
    t->key = tk_malloc(klen);
    if (!t->ns || !t->name || !t->version || !t->key) {
        tasker_template_free(t);
        return tk_enomem();
    }
    snprintf(t->key, klen, "%s/%s@%s", ns, name, version);
    *out = t;
    return TASKER_OK;
}

/* Finds a name listed twice; a hash set keeps a 100,000-dependency sink linear. */
static int find_duplicate(const char *const *names, size_t n, const char **dup)
{
    *dup = NULL;
    if (n < 16) {
        for (size_t i = 0; i < n && !*dup; i++)
            for (size_t j = 0; j < i; j++)
                if (strcmp(names[i], names[j]) == 0) {
                    *dup = names[i];
                    break;
                }
        return TASKER_OK;
    }
    tk_name_ent *set = NULL, *ents = tk_calloc(n, sizeof *ents), *e;
    if (!ents)
        return tk_enomem();
    for (size_t i = 0; i < n && !*dup; i++) {
        HASH_FIND_STR(set, names[i], e);
        if (e) {
            *dup = names[i];
            break;
        }
        ents[i].name = names[i];
        tk_hash_oom = 0;
        HASH_ADD_KEYPTR(hh, set, ents[i].name, strlen(ents[i].name), &ents[i]);
        if (tk_hash_oom)
            break;
    }
    int oom = tk_hash_oom;
    HASH_CLEAR(hh, set);
    tk_free(ents);
    return oom ? tk_enomem() : TASKER_OK;
}

int tasker_template_add_step(tasker_template *t, const char *name, const char *handler,
                             const char *const *depends_on, size_t n_deps,
                             const tasker_step_options *opts)
{
    if (!t)
        return tk_einval("tasker_template_add_step: template is NULL");
    if (t->finalized)
        return tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE, NULL,
                      "tasker_template_add_step: template is registered and read-only");
    if (!name)
        return tk_einval("tasker_template_add_step: step name is NULL");
    if (n_deps && !depends_on)
        return tk_einval("tasker_template_add_step: depends_on is NULL but n_deps is %zu", n_deps);
    if (!handler)
        handler = name;
    const char *why;
    if ((why = tk_name_problem(name, 1)))
        return terr(json_pack("{s:s, s:s}", "reason", "bad_name", "field", "step"),
                    "step name %s%s", why, NULL);
    if ((why = tk_name_problem(handler, 1)))
        return terr(json_pack("{s:s, s:s, s:s}", "reason", "bad_name", "field", "handler", "step",
                              name),
                    "step '%s': handler name %s", name, why);
    if (tk_template_find(t, name) >= 0)
        return terr(json_pack("{s:s, s:s}", "reason", "duplicate_step", "step", name),
                    "duplicate step '%s'%s", name, NULL);
    if (n_deps > 1000000)
        return terr(json_pack("{s:s, s:s}", "reason", "too_many_dependencies", "step", name),
                    "step '%s' lists too many dependencies%s", name, NULL);
    for (size_t i = 0; i < n_deps; i++) {
        if (!depends_on[i])
            return tk_einval("tasker_template_add_step: step '%s': depends_on[%zu] is NULL", name,
                             i);
        if ((why = tk_name_problem(depends_on[i], 1)))
            return terr(json_pack("{s:s, s:s}", "reason", "bad_name", "step", name),
                        "step '%s': a dependency name %s", name, why);
    }
    const char *dup = NULL;
    int rc = find_duplicate(depends_on, n_deps, &dup);
    if (rc)
        return rc;
    if (dup)
        return terr(json_pack("{s:s, s:s, s:s}", "reason", "duplicate_dependency", "step", name,
                              "dependency", dup),
                    "step '%s' lists dependency '%s' twice", name, dup);
    tasker_step_options o = TASKER_STEP_OPTIONS_INIT;
    if (opts) {
        if (opts->version != TASKER_STEP_OPTIONS_VERSION)
            return tk_einval("step '%s': tasker_step_options.version is %u, expected %u", name,
                             opts->version, TASKER_STEP_OPTIONS_VERSION);
        o = *opts;
    }
    const char *field;
    if (tk_options_check(&o, &field, &why) < 0)
        return tk_err(TASKER_ETEMPLATE, TASKER_CATEGORY_TEMPLATE,
                      json_pack("{s:s, s:s, s:s, s:s}", "reason", "bad_retry_policy", "step", name,
                                "field", field, "allowed", why),
                      "step '%s': bad retry policy: %s %s", name, field, why);

    if (t->n_steps == t->cap) {
        uint32_t cap = t->cap ? t->cap * 2 : 8;
        tk_tstep *ns = tk_realloc(t->steps, (size_t)cap * sizeof *ns);
        if (!ns)
            return tk_enomem();
        t->steps = ns;
        t->cap = cap;
    }
    tk_tstep s = {0};
    tk_name_ent *e = tk_malloc(sizeof *e);
    s.name = tk_strdup(name);
    s.handler = tk_strdup(handler);
    s.deps = n_deps ? tk_calloc(n_deps, sizeof *s.deps) : NULL;
    int nomem = !e || !s.name || !s.handler || (n_deps && !s.deps);
    for (size_t i = 0; i < n_deps && !nomem; i++) {
        if (!(s.deps[i] = tk_strdup(depends_on[i])))
            nomem = 1;
        else
            s.n_deps++;
    }
    if (nomem) {
        tk_free(e);
        free_step(&s);
        return tk_enomem();
    }
    s.opts = o;
    t->steps[t->n_steps] = s;
    e->name = t->steps[t->n_steps].name;
    e->idx = t->n_steps;
    tk_hash_oom = 0;
    HASH_ADD_KEYPTR(hh, t->index, e->name, strlen(e->name), e);
    if (tk_hash_oom) {
        tk_free(e);
        free_step(&t->steps[t->n_steps]);
        return tk_enomem();
    }
    t->n_steps++;
    return TASKER_OK;
}

/* Reports the cycle that the DFS found: stack[from..top] then the first again. */
static int cycle_error(const tasker_template *t, const uint32_t *stack, size_t from, size_t top)
{
    json_t *path = json_array();
    size_t shown = 0;
    for (size_t i = from; i <= top && shown < 64; i++, shown++)
        json_array_append_new(path, json_string(t->steps[stack[i]].name));
    if (top - from + 1 > 64)
        json_array_append_new(path, json_string("..."));
    json_array_append_new(path, json_string(t->steps[stack[from]].name));
    char *text = json_dumps(path, JSON_COMPACT);
    const char *first = t->steps[stack[from]].name;
    int rc = tk_err(TASKER_ETEMPLATE, TASKER_CATEGORY_TEMPLATE,
                    json_pack("{s:s, s:s, s:o}", "reason", "cycle", "step", first, "cycle", path),
                    "dependency cycle through step '%s': %s", first, text ? text : "?");
    free(text);
    return rc;
}

/* Iterative depth-first search so that 100,000-step chains need no deep C stack. */
static int find_cycle(const tasker_template *t)
{
    uint32_t n = t->n_steps;
    uint8_t *color = tk_calloc(n, 1); /* 0 white, 1 on stack, 2 done */
    uint32_t *stack = tk_malloc((size_t)n * sizeof *stack);
    uint32_t *next = tk_malloc((size_t)n * sizeof *next);
    int rc = TASKER_OK;
    if (!color || !stack || !next) {
        rc = tk_enomem();
        goto out;
    }
    for (uint32_t root = 0; root < n && rc == TASKER_OK; root++) {
        if (color[root])
            continue;
        size_t top = 0;
        stack[0] = root;
        next[0] = 0;
        color[root] = 1;
        for (;;) {
            uint32_t v = stack[top];
            const tk_tstep *s = &t->steps[v];
            if (next[top] < s->n_deps) {
                uint32_t w = s->dep_idx[next[top]++];
                if (color[w] == 1) {
                    size_t from = top;
                    while (stack[from] != w)
                        from--;
                    rc = cycle_error(t, stack, from, top);
                    break;
                }
                if (color[w] == 0) {
                    color[w] = 1;
                    stack[++top] = w;
                    next[top] = 0;
                }
            } else {
                color[v] = 2;
                if (top == 0)
                    break;
                top--;
            }
        }
    }
out:
    tk_free(color);
    tk_free(stack);
    tk_free(next);
    return rc;
}

int tk_template_finalize(tasker_template *t, uint32_t max_steps)
{
    if (t->finalized)
        return TASKER_OK;
    if (t->n_steps == 0)
        return terr(json_pack("{s:s, s:s}", "reason", "empty", "template", t->key),
                    "template '%s' has no steps%s", t->key, NULL);
    if (t->n_steps > max_steps) {
        char lim[32];
        snprintf(lim, sizeof lim, "%u", max_steps);
        return terr(json_pack("{s:s, s:i, s:i}", "reason", "too_many_steps", "steps", t->n_steps,
                              "max", max_steps),
                    "template '%s' has more steps than template.max_steps (%s)", t->key, lim);
    }
    uint32_t *counts = tk_calloc(t->n_steps, sizeof *counts);
    if (!counts)
        return tk_enomem();
    int rc = TASKER_OK;
    for (uint32_t i = 0; i < t->n_steps && rc == TASKER_OK; i++) {
        tk_tstep *s = &t->steps[i];
        if (s->n_deps && !s->dep_idx && !(s->dep_idx = tk_malloc(s->n_deps * sizeof(uint32_t)))) {
            rc = tk_enomem();
            break;
        }
        for (uint32_t d = 0; d < s->n_deps; d++) {
            int64_t j = tk_template_find(t, s->deps[d]);
            if (j < 0) {
                rc = terr(json_pack("{s:s, s:s, s:s}", "reason", "unknown_dependency", "step",
                                    s->name, "dependency", s->deps[d]),
                          "step '%s' depends on unknown step '%s'", s->name, s->deps[d]);
                break;
            }
            s->dep_idx[d] = (uint32_t)j;
            counts[j]++;
        }
    }
    if (rc == TASKER_OK)
        rc = find_cycle(t);
    uint32_t n_roots = 0;
    for (uint32_t i = 0; i < t->n_steps && rc == TASKER_OK; i++) {
        tk_tstep *s = &t->steps[i];
        if (s->n_deps == 0)
            n_roots++;
        tk_free(s->dependents);
        s->dependents = NULL;
        s->n_dependents = 0;
        if (counts[i] && !(s->dependents = tk_malloc(counts[i] * sizeof(uint32_t))))
            rc = tk_enomem();
    }
    if (rc == TASKER_OK) {
        tk_free(t->roots);
        if (!(t->roots = tk_malloc((n_roots ? n_roots : 1) * sizeof(uint32_t))))
            rc = tk_enomem();
    }
    if (rc == TASKER_OK) {
        t->n_roots = 0;
        for (uint32_t i = 0; i < t->n_steps; i++) {
            tk_tstep *s = &t->steps[i];
            if (s->n_deps == 0)
                t->roots[t->n_roots++] = i;
            for (uint32_t d = 0; d < s->n_deps; d++) {
                tk_tstep *dep = &t->steps[s->dep_idx[d]];
                dep->dependents[dep->n_dependents++] = i;
            }
        }
        t->finalized = 1;
    }
    tk_free(counts);
    return rc;
}

int tk_template_clone(tasker_template **out, const tasker_template *t)
{
    tasker_template *c;
    int rc = tasker_template_new(&c, t->ns, t->name, t->version);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < t->n_steps; i++) {
        const tk_tstep *s = &t->steps[i];
        rc = tasker_template_add_step(c, s->name, s->handler, (const char *const *)s->deps,
                                      s->n_deps, &s->opts);
        if (rc) {
            tasker_template_free(c);
            return rc;
        }
    }
    *out = c;
    return TASKER_OK;
}

static int opts_equal(const tasker_step_options *a, const tasker_step_options *b)
{
    return a->max_attempts == b->max_attempts && a->backoff == b->backoff &&
           a->base_ms == b->base_ms && a->max_ms == b->max_ms && a->jitter == b->jitter &&
           a->timeout_ms == b->timeout_ms;
}

int tk_template_equal(const tasker_template *a, const tasker_template *b)
{
    if (strcmp(a->key, b->key) != 0 || a->n_steps != b->n_steps)
        return 0;
    for (uint32_t i = 0; i < a->n_steps; i++) {
        const tk_tstep *x = &a->steps[i], *y = &b->steps[i];
        if (strcmp(x->name, y->name) || strcmp(x->handler, y->handler) ||
            x->n_deps != y->n_deps || !opts_equal(&x->opts, &y->opts))
            return 0;
        for (uint32_t d = 0; d < x->n_deps; d++)
            if (strcmp(x->deps[d], y->deps[d]))
                return 0;
    }
    return 1;
}

/* ---- JSON ---------------------------------------------------------------- */

static const char *backoff_name(tasker_backoff b)
{
    return b == TASKER_BACKOFF_LINEAR ? "linear" : b == TASKER_BACKOFF_EXPONENTIAL ? "exponential"
                                                                                     : "none";
}

int tasker_template_to_json(char **json_out, const tasker_template *t)
{
    if (!json_out || !t)
        return tk_einval("tasker_template_to_json: arguments must not be NULL");
    *json_out = NULL;
    json_t *steps = json_array();
    json_t *root = json_pack("{s:s, s:s, s:s, s:o}", "namespace", t->ns, "name", t->name,
                             "version", t->version, "steps", steps);
    if (!root)
        return tk_enomem();
    for (uint32_t i = 0; i < t->n_steps; i++) {
        const tk_tstep *s = &t->steps[i];
        json_t *deps = json_array();
        for (uint32_t d = 0; d < s->n_deps; d++)
            json_array_append_new(deps, json_string(s->deps[d]));
        json_t *js = json_pack(
            "{s:s, s:s, s:o, s:{s:i, s:s, s:I, s:I, s:f}, s:I}", "name", s->name, "handler",
            s->handler, "depends_on", deps, "retry", "max_attempts", (int)s->opts.max_attempts,
            "backoff", backoff_name(s->opts.backoff), "base_ms", (json_int_t)s->opts.base_ms,
            "max_ms", (json_int_t)s->opts.max_ms, "jitter", s->opts.jitter, "timeout_ms",
            (json_int_t)s->opts.timeout_ms);
        if (!js || json_array_append_new(steps, js)) {
            json_decref(root);
            return tk_enomem();
        }
    }
    *json_out = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return *json_out ? TASKER_OK : tk_enomem();
}

static int unknown_key(const char *where, const char *key, const char *step)
{
    return tk_err(TASKER_ETEMPLATE, TASKER_CATEGORY_TEMPLATE,
                  step ? json_pack("{s:s, s:s, s:s}", "reason", "unknown_key", "key", key, "step",
                                   step)
                       : json_pack("{s:s, s:s}", "reason", "unknown_key", "key", key),
                  "unknown key '%s' in %s%s%s", key, where, step ? " of step " : "",
                  step ? step : "");
}

static int shape_error(const char *step, const char *msg)
{
    return tk_err(TASKER_ETEMPLATE, TASKER_CATEGORY_TEMPLATE,
                  step ? json_pack("{s:s, s:s, s:s}", "reason", "malformed_json", "step", step,
                                   "message", msg)
                       : json_pack("{s:s, s:s}", "reason", "malformed_json", "message", msg),
                  "template JSON%s%s: %s", step ? ", step " : "", step ? step : "", msg);
}

static int bad_policy(const char *step, const char *field, const char *why)
{
    return tk_err(TASKER_ETEMPLATE, TASKER_CATEGORY_TEMPLATE,
                  json_pack("{s:s, s:s, s:s, s:s}", "reason", "bad_retry_policy", "step", step,
                            "field", field, "allowed", why),
                  "step '%s': bad retry policy: %s %s", step, field, why);
}

/* Reads an integer field into *dst within [0, max]. */
static int read_uint(json_t *v, const char *step, const char *field, uint64_t max, uint32_t *dst)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        (uint64_t)json_integer_value(v) > max) {
        char why[64];
        snprintf(why, sizeof why, "must be an integer 0..%llu", (unsigned long long)max);
        return bad_policy(step, field, why);
    }
    *dst = (uint32_t)json_integer_value(v);
    return TASKER_OK;
}

static int parse_retry(json_t *r, const char *step, tasker_step_options *o)
{
    if (!json_is_object(r))
        return bad_policy(step, "retry", "must be an object");
    const char *k;
    json_t *v;
    int rc;
    json_object_foreach(r, k, v) {
        if (!strcmp(k, "max_attempts")) {
            if ((rc = read_uint(v, step, k, 1000, &o->max_attempts)))
                return rc;
        } else if (!strcmp(k, "base_ms")) {
            if ((rc = read_uint(v, step, k, 86400000, &o->base_ms)))
                return rc;
        } else if (!strcmp(k, "max_ms")) {
            if ((rc = read_uint(v, step, k, 86400000, &o->max_ms)))
                return rc;
        } else if (!strcmp(k, "jitter")) {
            if (!json_is_number(v))
                return bad_policy(step, k, "must be a number 0.0..1.0");
            o->jitter = json_number_value(v);
        } else if (!strcmp(k, "backoff")) {
            const char *b = json_string_value(v);
            if (b && !strcmp(b, "none"))
                o->backoff = TASKER_BACKOFF_NONE;
            else if (b && !strcmp(b, "linear"))
                o->backoff = TASKER_BACKOFF_LINEAR;
            else if (b && !strcmp(b, "exponential"))
                o->backoff = TASKER_BACKOFF_EXPONENTIAL;
            else
                return bad_policy(step, k, "must be \"none\", \"linear\" or \"exponential\"");
        } else {
            return unknown_key("retry", k, step);
        }
    }
    return TASKER_OK;
}

static int parse_step(tasker_template *t, json_t *js, size_t i)
{
    char label[32];
    snprintf(label, sizeof label, "#%zu", i);
    if (!json_is_object(js))
        return shape_error(label, "each step must be an object");
    json_t *jn = json_object_get(js, "name");
    const char *name = json_string_value(jn);
    if (!name)
        return shape_error(label, "\"name\" must be a string");
    const char *handler = NULL;
    tasker_step_options o = TASKER_STEP_OPTIONS_INIT;
    json_t *deps = NULL;
    const char *k;
    json_t *v;
    int rc;
    json_object_foreach(js, k, v) {
        if (!strcmp(k, "name"))
            continue;
        if (!strcmp(k, "handler")) {
            if (!(handler = json_string_value(v)))
                return shape_error(name, "\"handler\" must be a string");
        } else if (!strcmp(k, "depends_on")) {
            if (!json_is_array(v))
                return shape_error(name, "\"depends_on\" must be an array of step names");
            deps = v;
        } else if (!strcmp(k, "retry")) {
            if ((rc = parse_retry(v, name, &o)))
                return rc;
        } else if (!strcmp(k, "timeout_ms")) {
            if ((rc = read_uint(v, name, k, 86400000, &o.timeout_ms)))
                return rc;
        } else {
            return unknown_key("step", k, name);
        }
    }
    size_t nd = deps ? json_array_size(deps) : 0;
    const char **names = nd ? tk_calloc(nd, sizeof *names) : NULL;
    if (nd && !names)
        return tk_enomem();
    for (size_t d = 0; d < nd; d++) {
        if (!(names[d] = json_string_value(json_array_get(deps, d)))) {
            tk_free(names);
            return shape_error(name, "\"depends_on\" must be an array of step names");
        }
    }
    rc = tasker_template_add_step(t, name, handler, names, nd, &o);
    tk_free(names);
    return rc;
}

int tk_template_parse(tasker_template **out, const char *json, size_t len, size_t max_bytes)
{
    if (!out || !json)
        return tk_einval("template JSON: out and json must not be NULL");
    *out = NULL;
    if (len == 0)
        len = strnlen(json, max_bytes + 1);
    if (len > max_bytes) {
        char lim[32];
        snprintf(lim, sizeof lim, "%zu", max_bytes);
        return tk_err(TASKER_ETEMPLATE, TASKER_CATEGORY_TEMPLATE,
                      json_pack("{s:s, s:I, s:I}", "reason", "oversize", "bytes", (json_int_t)len,
                                "max", (json_int_t)max_bytes),
                      "template JSON is larger than the limit of %s bytes "
                      "(template.max_json_bytes)", lim);
    }
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return tk_err(TASKER_ETEMPLATE, TASKER_CATEGORY_TEMPLATE,
                      json_pack("{s:s, s:s, s:i, s:i}", "reason", "malformed_json", "message",
                                jerr.text, "line", jerr.line, "column", jerr.column),
                      "template JSON is malformed at line %d column %d: %s", jerr.line,
                      jerr.column, jerr.text);
    int rc = TASKER_OK;
    tasker_template *t = NULL;
    const char *ns = NULL, *name = NULL, *version = "1";
    json_t *steps = NULL;
    const char *k;
    json_t *v;
    if (!json_is_object(root)) {
        rc = shape_error(NULL, "the top level must be an object");
        goto out;
    }
    json_object_foreach(root, k, v) {
        if (!strcmp(k, "namespace"))
            ns = json_string_value(v) ? json_string_value(v) : "";
        else if (!strcmp(k, "name"))
            name = json_string_value(v) ? json_string_value(v) : "";
        else if (!strcmp(k, "version"))
            version = json_string_value(v) ? json_string_value(v) : "";
        else if (!strcmp(k, "steps"))
            steps = v;
        else {
            rc = unknown_key("template", k, NULL);
            goto out;
        }
    }
    if (!ns || !name) {
        rc = shape_error(NULL, "\"namespace\" and \"name\" are required strings");
        goto out;
    }
    if (!json_is_array(steps)) {
        rc = shape_error(NULL, "\"steps\" must be an array");
        goto out;
    }
    if ((rc = tasker_template_new(&t, ns, name, version)))
        goto out;
    for (size_t i = 0; i < json_array_size(steps) && rc == TASKER_OK; i++)
        rc = parse_step(t, json_array_get(steps, i), i);
    if (rc == TASKER_OK && t->n_steps == 0)
        rc = terr(json_pack("{s:s, s:s}", "reason", "empty", "template", t->key),
                  "template '%s' has no steps%s", t->key, NULL);
out:
    json_decref(root);
    if (rc) {
        tasker_template_free(t);
        return rc;
    }
    *out = t;
    return TASKER_OK;
}

int tasker_template_from_json(tasker_template **out, const char *json, size_t len)
{
    return tk_template_parse(out, json, len, DEFAULT_MAX_JSON);
}
