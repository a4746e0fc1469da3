#define _GNU_SOURCE
#include "prom_check.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAME 256
#define MAX_FAMILIES 512
#define MAX_LABELS 32

typedef struct family {
    char name[MAX_NAME];
    char type[16]; /* "" until its TYPE line */
    int help, samples, closed;
} family;

typedef struct checker {
    family fam[MAX_FAMILIES];
    size_t n_fam;
    family *current; /* the family whose lines come last */
    /* the histogram series being read: its name, labels without le, and the
     * last bucket seen */
    char hist_key[2048];
    double last_le, last_count, inf_count;
    int in_hist, have_inf;
    size_t line;
    char *err;
    size_t err_size;
} checker;

static int fail(checker *c, const char *fmt, ...)
{
    int n = snprintf(c->err, c->err_size, "line %zu: ", c->line);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < c->err_size)
        vsnprintf(c->err + n, c->err_size - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static int is_name_start(char ch, int colon)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' || (colon && ch == ':');
}

static int is_name_char(char ch, int colon)
{
    return is_name_start(ch, colon) || (ch >= '0' && ch <= '9');
}

/* Length of the metric (colon 1) or label (colon 0) name at `s`; 0 if none. */
static size_t name_len(const char *s, int colon)
{
    if (!is_name_start(*s, colon))
        return 0;
    size_t n = 1;
    while (is_name_char(s[n], colon))
        n++;
    return n;
}

static family *find(checker *c, const char *name, size_t len)
{
    for (size_t i = 0; i < c->n_fam; i++)
        if (strlen(c->fam[i].name) == len && strncmp(c->fam[i].name, name, len) == 0)
            return &c->fam[i];
    return NULL;
}

/* The family `name` (created if new), made the current one: a family whose
 * lines ended may not come back. */
static family *enter(checker *c, const char *name, size_t len)
{
    if (len >= MAX_NAME) {
        fail(c, "metric name longer than %d bytes", MAX_NAME - 1);
        return NULL;
    }
    family *f = find(c, name, len);
    if (!f) {
        if (c->n_fam == MAX_FAMILIES) {
            fail(c, "more than %d metric families", MAX_FAMILIES);
            return NULL;
        }
        f = &c->fam[c->n_fam++];
        memset(f, 0, sizeof *f);
        memcpy(f->name, name, len);
        f->name[len] = '\0';
    }
    if (f != c->current) {
        if (c->in_hist && !c->have_inf) {
            fail(c, "histogram %s{%s} ends without le=\"+Inf\"", c->current->name, c->hist_key);
            return NULL;
        }
        c->in_hist = 0;
        if (f->closed) {
            fail(c, "lines of family %s are not together", f->name);
            return NULL;
        }
        if (c->current)
            c->current->closed = 1;
        c->current = f;
    }
    return f;
}

/* Parses a sample value: a decimal float, or +Inf, -Inf, Inf, NaN. */
static int parse_float(const char *s, size_t len, double *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (!strcmp(buf, "+Inf") || !strcmp(buf, "Inf")) {
        *out = INFINITY;
        return 0;
    }
    if (!strcmp(buf, "-Inf")) {
        *out = -INFINITY;
        return 0;
    }
    if (!strcmp(buf, "NaN")) {
        *out = NAN;
        return 0;
    }
    /* strtod also takes hex, "inf", "nan(...)": not in the format. */
    for (size_t i = 0; i < len; i++)
        if (!strchr("0123456789+-.eE", buf[i]))
            return -1;
    char *end;
    *out = strtod(buf, &end);
    return *end == '\0' && end != buf ? 0 : -1;
}

static int check_comment(checker *c, const char *line, size_t len)
{
    int help = len >= 7 && strncmp(line, "# HELP ", 7) == 0;
    int type = len >= 7 && strncmp(line, "# TYPE ", 7) == 0;
    if (!help && !type)
        return 0; /* any other comment is free text */
    const char *p = line + 7;
    size_t n = name_len(p, 1);
    if (n == 0)
        return fail(c, "%s without a valid metric name", help ? "HELP" : "TYPE");
    family *f = enter(c, p, n);
    if (!f)
        return -1;
    const char *rest = p + n, *end = line + len;
    if (help) {
        if (f->help)
            return fail(c, "second HELP for %s", f->name);
        f->help = 1;
        if (rest < end && *rest != ' ')
            return fail(c, "HELP name not followed by a space");
        for (const char *q = rest; q < end; q++)
            if (*q == '\\') {
                if (q + 1 >= end || (q[1] != '\\' && q[1] != 'n'))
                    return fail(c, "bad escape in HELP text of %s", f->name);
                q++;
            }
        return 0;
    }
    if (f->type[0])
        return fail(c, "second TYPE for %s", f->name);
    if (f->samples)
        return fail(c, "TYPE for %s after its samples", f->name);
    if (rest >= end || *rest != ' ')
        return fail(c, "TYPE %s without a type", f->name);
    rest++;
    size_t tlen = (size_t)(end - rest);
    static const char *const types[] = {"counter", "gauge", "histogram", "summary", "untyped"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strlen(types[i]) == tlen && strncmp(rest, types[i], tlen) == 0) {
            memcpy(f->type, types[i], tlen + 1);
            return 0;
        }
    return fail(c, "unknown TYPE '%.*s' for %s", (int)tlen, rest, f->name);
}

static int ends_with(const char *s, size_t len, const char *suffix, size_t *base)
{
    size_t n = strlen(suffix);
    if (len > n && strncmp(s + len - n, suffix, n) == 0) {
        *base = len - n;
        return 1;
    }
    return 0;
}

static int check_sample(checker *c, const char *line, size_t len)
{
    const char *p = line, *end = line + len;
    size_t n = name_len(p, 1);
    if (n == 0)
        return fail(c, "sample without a valid metric name: %.60s", line);
    const char *name = p;
    size_t nlen = n;
    p += n;

    /* Labels; the ones other than le are kept as the histogram series key. */
    char key[2048];
    size_t klen = 0;
    char seen[MAX_LABELS][MAX_NAME];
    size_t n_seen = 0;
    double le = NAN;
    int has_le = 0;
    if (p < end && *p == '{') {
        p++;
        while (p < end && *p != '}') {
            size_t ln = name_len(p, 0);
            if (ln == 0 || ln >= MAX_NAME)
                return fail(c, "bad label name in %.60s", line);
            for (size_t i = 0; i < n_seen; i++)
                if (strlen(seen[i]) == ln && strncmp(seen[i], p, ln) == 0)
                    return fail(c, "label %.*s twice", (int)ln, p);
            if (n_seen == MAX_LABELS)
                return fail(c, "more than %d labels", MAX_LABELS);
            memcpy(seen[n_seen], p, ln);
            seen[n_seen++][ln] = '\0';
            const char *lname = p;
            p += ln;
            if (p + 1 >= end || p[0] != '=' || p[1] != '"')
                return fail(c, "label %.*s not followed by =\"", (int)ln, lname);
            p += 2;
            const char *vstart = p;
            while (p < end && *p != '"') {
                if (*p == '\\') {
                    if (p + 1 >= end || (p[1] != '\\' && p[1] != '"' && p[1] != 'n'))
                        return fail(c, "bad escape in the value of label %.*s", (int)ln, lname);
                    p++;
                }
                p++;
            }
            if (p >= end)
                return fail(c, "unterminated value of label %.*s", (int)ln, lname);
            size_t vlen = (size_t)(p - vstart);
            p++; /* closing quote */
            if (ln == 2 && strncmp(lname, "le", 2) == 0) {
                if (parse_float(vstart, vlen, &le) != 0)
                    return fail(c, "le=\"%.*s\" is not a float", (int)vlen, vstart);
                has_le = 1;
            } else if (klen + ln + vlen + 4 < sizeof key) {
                klen += (size_t)snprintf(key + klen, sizeof key - klen, "%.*s=%.*s,", (int)ln,
                                         lname, (int)vlen, vstart);
            }
            if (p < end && *p == ',')
                p++;
            else if (p < end && *p != '}')
                return fail(c, "expected , or } after label %.*s", (int)ln, lname);
        }
        if (p >= end)
            return fail(c, "unterminated label set");
        p++;
    }

    if (p >= end || (*p != ' ' && *p != '\t'))
        return fail(c, "no value after %.*s", (int)nlen, name);
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    const char *v = p;
    while (p < end && *p != ' ' && *p != '\t')
        p++;
    double value;
    if (parse_float(v, (size_t)(p - v), &value) != 0)
        return fail(c, "value '%.*s' is not a float", (int)(p - v), v);
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    if (p < end) {
        const char *t = p;
        if (*p == '-')
            p++;
        const char *digits = p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p == digits || p != end)
            return fail(c, "junk after the value: '%.*s'", (int)(end - t), t);
    }

    /* The family: declared by name, or a histogram/summary's series. */
    family *f = find(c, name, nlen);
    const char *suffix = "";
    size_t base;
    if (!f || !f->type[0]) {
        family *g = NULL;
        if (ends_with(name, nlen, "_bucket", &base) && (g = find(c, name, base)) &&
            !strcmp(g->type, "histogram"))
            suffix = "_bucket";
        else if (ends_with(name, nlen, "_sum", &base) && (g = find(c, name, base)) &&
                 (!strcmp(g->type, "histogram") || !strcmp(g->type, "summary")))
            suffix = "_sum";
        else if (ends_with(name, nlen, "_count", &base) && (g = find(c, name, base)) &&
                 (!strcmp(g->type, "histogram") || !strcmp(g->type, "summary")))
            suffix = "_count";
        else
            g = NULL;
        if (!g)
            return fail(c, "sample %.*s belongs to no family declared with TYPE", (int)nlen, name);
        f = g;
    }
    family *cur = enter(c, f->name, strlen(f->name));
    if (!cur)
        return -1;
    cur->samples++;

    if (!strcmp(f->type, "histogram")) {
        if (!strcmp(suffix, "")) /* a histogram has no plain series */
            return fail(c, "histogram %s has a sample without _bucket/_sum/_count", f->name);
        if (!strcmp(suffix, "_bucket")) {
            if (!has_le)
                return fail(c, "bucket of %s without le", f->name);
            key[klen] = '\0';
            if (!c->in_hist || strcmp(c->hist_key, key) != 0) {
                if (c->in_hist && !c->have_inf)
                    return fail(c, "histogram series %s{%s} ends without le=\"+Inf\"", f->name,
                                c->hist_key);
                snprintf(c->hist_key, sizeof c->hist_key, "%s", key);
                c->in_hist = 1;
                c->have_inf = 0;
                c->last_le = -INFINITY;
                c->last_count = 0;
            } else if (c->have_inf) {
                return fail(c, "bucket of %s after le=\"+Inf\"", f->name);
            }
            if (!(le > c->last_le))
                return fail(c, "le %g of %s does not grow", le, f->name);
            if (value < c->last_count)
                return fail(c, "bucket le=%g of %s has %g < %g of the bucket before", le,
                            f->name, value, c->last_count);
            c->last_le = le;
            c->last_count = value;
            if (isinf(le) && le > 0) {
                c->have_inf = 1;
                c->inf_count = value;
            }
        } else if (!strcmp(suffix, "_count")) {
            key[klen] = '\0';
            if (!c->in_hist || strcmp(c->hist_key, key) != 0 || !c->have_inf)
                return fail(c, "%s_count without its buckets up to le=\"+Inf\"", f->name);
            if (value != c->inf_count)
                return fail(c, "%s_count %g differs from its +Inf bucket %g", f->name, value,
                            c->inf_count);
        }
    }
    return 0;
}

int prom_check(const char *text, size_t *samples_out, char *err, size_t err_size)
{
    checker *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    c->err = err;
    c->err_size = err_size;
    err[0] = '\0';
    size_t samples = 0;
    int rc = 0;
    const char *p = text;
    while (*p && rc == 0) {
        c->line++;
        const char *nl = strchr(p, '\n');
        if (!nl) {
            rc = fail(c, "last line does not end with a newline");
            break;
        }
        size_t len = (size_t)(nl - p);
        if (len > 0 && p[len - 1] == '\r')
            rc = fail(c, "carriage return at the end of the line");
        else if (len == 0)
            ; /* blank lines are allowed */
        else if (p[0] == '#')
            rc = check_comment(c, p, len);
        else {
            rc = check_sample(c, p, len);
            samples++;
        }
        p = nl + 1;
    }
    if (rc == 0 && c->in_hist && !c->have_inf)
        rc = fail(c, "histogram %s{%s} ends without le=\"+Inf\"", c->current->name, c->hist_key);
    if (samples_out)
        *samples_out = samples;
    free(c);
    return rc;
}

double prom_value(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, series, n) == 0 && (p[n] == ' ' || p[n] == '\t'))
            return strtod(p + n + 1, NULL);
    }
    return -1.0;
}
