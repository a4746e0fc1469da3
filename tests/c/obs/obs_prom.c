/* A strict reader of the Prometheus text exposition format; see obs_prom.h. */
#define _GNU_SOURCE
#include "obs_prom.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { F_UNTYPED, F_COUNTER, F_GAUGE, F_HISTOGRAM, F_SUMMARY } ftype;

typedef struct family {
    char *name;
    ftype type;
    int typed, helped;
    int state; /* 0: no line of it yet, 1: its lines are current, 2: closed */
} family;

typedef struct parser {
    const char *text;
    int line;
    char *err;
    size_t err_size;
    family *fam;
    size_t n_fam, cap_fam;
    long current; /* index of the family whose lines come now, -1 none */
    prom_doc doc;
    size_t cap_samples;
    char **keys;      /* canonical "name{sorted labels}" per sample */
    size_t *fam_of;   /* family index per sample */
} parser;

static int fail(parser *p, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(p->err, p->err_size, "line %d: ", p->line);
    if (n < 0 || (size_t)n >= p->err_size)
        return -1;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->err_size - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static int is_name_start(int c)
{
    return isalpha(c) || c == '_' || c == ':';
}

static int is_name_char(int c)
{
    return isalnum(c) || c == '_' || c == ':';
}

/* Length of a metric name at s (0 if none). */
static size_t metric_name_len(const char *s)
{
    size_t n = 0;
    if (!is_name_start((unsigned char)s[0]))
        return 0;
    while (is_name_char((unsigned char)s[n]))
        n++;
    return n;
}

static size_t label_name_len(const char *s)
{
    size_t n = 0;
    if (!(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return 0;
    while (isalnum((unsigned char)s[n]) || s[n] == '_')
        n++;
    return n;
}

static const char *skip_blanks(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

static long family_find(parser *p, const char *name, size_t len)
{
    for (size_t i = 0; i < p->n_fam; i++)
        if (strlen(p->fam[i].name) == len && memcmp(p->fam[i].name, name, len) == 0)
            return (long)i;
    return -1;
}

static long family_get(parser *p, const char *name, size_t len)
{
    long i = family_find(p, name, len);
    if (i >= 0)
        return i;
    if (p->n_fam == p->cap_fam) {
        size_t cap = p->cap_fam ? p->cap_fam * 2 : 32;
        family *f = realloc(p->fam, cap * sizeof *f);
        if (!f)
            return -1;
        p->fam = f;
        p->cap_fam = cap;
    }
    family *f = &p->fam[p->n_fam];
    memset(f, 0, sizeof *f);
    f->name = strndup(name, len);
    if (!f->name)
        return -1;
    return (long)p->n_fam++;
}

/* Makes family `i` the one whose lines come now; a family whose lines
 * resume after another family's is interleaved. */
static int family_enter(parser *p, long i)
{
    if (p->current == i)
        return 0;
    if (p->fam[i].state == 2)
        return fail(p, "lines of family '%s' are interleaved with another family's",
                    p->fam[i].name);
    if (p->current >= 0)
        p->fam[p->current].state = 2;
    p->current = i;
    p->fam[i].state = 1;
    return 0;
}

static int check_help_text(parser *p, const char *s)
{
    for (; *s; s++) {
        if (*s != '\\')
            continue;
        if (s[1] != '\\' && s[1] != 'n')
            return fail(p, "HELP text has the escape '\\%c' (only \\\\ and \\n are allowed)",
                        s[1] ? s[1] : '?');
        s++;
    }
    return 0;
}

static int comment_line(parser *p, const char *s)
{
    s = skip_blanks(s + 1);
    int is_help = strncmp(s, "HELP", 4) == 0 && (s[4] == ' ' || s[4] == '\t');
    int is_type = strncmp(s, "TYPE", 4) == 0 && (s[4] == ' ' || s[4] == '\t');
    if (!is_help && !is_type)
        return 0; /* an ordinary comment */
    s = skip_blanks(s + 4);
    size_t n = metric_name_len(s);
    if (n == 0)
        return fail(p, "%s line without a valid metric name", is_help ? "HELP" : "TYPE");
    if (s[n] != '\0' && s[n] != ' ' && s[n] != '\t')
        return fail(p, "invalid character '%c' in metric name", s[n]);
    long fi = family_get(p, s, n);
    if (fi < 0)
        return fail(p, "out of memory");
    if (family_enter(p, fi) < 0)
        return -1;
    family *f = &p->fam[fi];
    const char *rest = skip_blanks(s + n);
    if (is_help) {
        if (f->helped)
            return fail(p, "second HELP line for '%s'", f->name);
        f->helped = 1;
        return check_help_text(p, rest);
    }
    if (f->typed)
        return fail(p, "second TYPE line for '%s'", f->name);
    /* family_enter() marked it current; samples before it would have made
     * it typed implicitly, which we never allow, so no sample came yet. */
    static const struct {
        const char *name;
        ftype type;
    } types[] = {{"counter", F_COUNTER},
                 {"gauge", F_GAUGE},
                 {"histogram", F_HISTOGRAM},
                 {"summary", F_SUMMARY},
                 {"untyped", F_UNTYPED}};
    size_t tl = 0;
    while (rest[tl] && rest[tl] != ' ' && rest[tl] != '\t')
        tl++;
    if (*skip_blanks(rest + tl) != '\0')
        return fail(p, "text after the type in a TYPE line");
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (strlen(types[i].name) == tl && strncmp(rest, types[i].name, tl) == 0) {
            f->type = types[i].type;
            f->typed = 1;
            return 0;
        }
    }
    return fail(p, "unknown metric type '%.*s'", (int)tl, rest);
}

static int parse_value(const char *tok, size_t len, double *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, tok, len);
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
    /* strtod also reads hex floats and "inf"/"nan" spellings the format
     * does not have. */
    for (size_t i = 0; i < len; i++)
        if (!(isdigit((unsigned char)buf[i]) || strchr("+-.eE", buf[i])))
            return -1;
    char *end;
    *out = strtod(buf, &end);
    return *end == '\0' ? 0 : -1;
}

static int label_cmp(const void *a, const void *b)
{
    return strcmp(((const prom_label *)a)->name, ((const prom_label *)b)->name);
}

/* "name\x01l1\x02v1\x01l2\x02v2..." with labels sorted, optionally without le. */
static char *series_key(const char *name, const prom_label *labels, size_t n, int skip_le)
{
    prom_label *sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!sorted)
        return NULL;
    size_t m = 0, len = strlen(name) + 1;
    for (size_t i = 0; i < n; i++) {
        if (skip_le && !strcmp(labels[i].name, "le"))
            continue;
        sorted[m++] = labels[i];
        len += strlen(labels[i].name) + strlen(labels[i].value) + 2;
    }
    qsort(sorted, m, sizeof *sorted, label_cmp);
    char *key = malloc(len);
    if (key) {
        char *w = stpcpy(key, name);
        for (size_t i = 0; i < m; i++) {
            *w++ = '\x01';
            w = stpcpy(w, sorted[i].name);
            *w++ = '\x02';
            w = stpcpy(w, sorted[i].value);
        }
    }
    free(sorted);
    return key;
}

static void free_labels(prom_label *l, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(l[i].name);
        free(l[i].value);
    }
    free(l);
}

/* Parses `{...}` at *sp; advances *sp past the '}'. */
static int parse_labels(parser *p, const char **sp, prom_label **out, size_t *n_out)
{
    const char *s = *sp + 1;
    prom_label *labels = NULL;
    size_t n = 0, cap = 0;
    s = skip_blanks(s);
    while (*s != '}') {
        size_t nl = label_name_len(s);
        if (nl == 0) {
            free_labels(labels, n);
            return fail(p, "expected a label name at '%.10s'", s);
        }
        if (nl >= 2 && s[0] == '_' && s[1] == '_') {
            free_labels(labels, n);
            return fail(p, "label name '%.*s' is reserved (starts with __)", (int)nl, s);
        }
        char *lname = strndup(s, nl);
        s = skip_blanks(s + nl);
        if (*s != '=') {
            free(lname);
            free_labels(labels, n);
            return fail(p, "expected '=' after label name");
        }
        s = skip_blanks(s + 1);
        if (*s != '"') {
            free(lname);
            free_labels(labels, n);
            return fail(p, "label value is not quoted");
        }
        s++;
        size_t vcap = strlen(s) + 1, vn = 0;
        char *val = malloc(vcap);
        int ok = 0;
        while (val && *s) {
            if (*s == '"') {
                ok = 1;
                s++;
                break;
            }
            if (*s == '\\') {
                if (s[1] == '\\' || s[1] == '"')
                    val[vn++] = s[1];
                else if (s[1] == 'n')
                    val[vn++] = '\n';
                else {
                    char bad = s[1];
                    free(val);
                    free(lname);
                    free_labels(labels, n);
                    return fail(p, "label value has the escape '\\%c' (allowed: \\\\ \\\" \\n)",
                                bad ? bad : '?');
                }
                s += 2;
                continue;
            }
            val[vn++] = *s++;
        }
        if (!ok) {
            free(val);
            free(lname);
            free_labels(labels, n);
            return fail(p, "unterminated label value");
        }
        val[vn] = '\0';
        for (size_t i = 0; i < n; i++) {
            if (!strcmp(labels[i].name, lname)) {
                free(val);
                free_labels(labels, n);
                fail(p, "label '%s' given twice", lname);
                free(lname);
                return -1;
            }
        }
        if (n == cap) {
            prom_label *more = realloc(labels, (cap ? cap * 2 : 4) * sizeof *labels);
            if (!more) {
                free(val);
                free(lname);
                free_labels(labels, n);
                return fail(p, "out of memory");
            }
            labels = more;
            cap = cap ? cap * 2 : 4;
        }
        labels[n].name = lname;
        labels[n].value = val;
        n++;
        s = skip_blanks(s);
        if (*s == ',') {
            s = skip_blanks(s + 1);
            continue; /* a trailing comma before '}' is allowed */
        }
        if (*s != '}') {
            free_labels(labels, n);
            return fail(p, "expected ',' or '}' after a label value");
        }
    }
    *sp = s + 1;
    *out = labels;
    *n_out = n;
    return 0;
}

static const char *ends_with(const char *name, size_t len, const char *suffix)
{
    size_t sl = strlen(suffix);
    return len > sl && memcmp(name + len - sl, suffix, sl) == 0 ? name + len - sl : NULL;
}

/* The family a sample belongs to, -1 (with the error set) if none. */
static long family_of_sample(parser *p, const char *name, size_t len)
{
    long fi = family_find(p, name, len);
    if (fi >= 0 && p->fam[fi].typed) {
        ftype t = p->fam[fi].type;
        if (t == F_HISTOGRAM || t == F_SUMMARY)
            return fail(p, "'%.*s' is a %s: its samples are _bucket/_sum/_count", (int)len, name,
                        t == F_HISTOGRAM ? "histogram" : "summary");
        return fi;
    }
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    for (int i = 0; i < 3; i++) {
        const char *suf = ends_with(name, len, suffixes[i]);
        if (!suf)
            continue;
        long bi = family_find(p, name, (size_t)(suf - name));
        if (bi < 0 || !p->fam[bi].typed)
            continue;
        ftype t = p->fam[bi].type;
        if (t == F_HISTOGRAM || (t == F_SUMMARY && i > 0))
            return bi;
    }
    return fail(p, "sample '%.*s' belongs to no family declared with TYPE", (int)len, name);
}

static int sample_line(parser *p, const char *s)
{
    size_t nl = metric_name_len(s);
    if (nl == 0)
        return fail(p, "expected a metric name at '%.10s'", s);
    long fi = family_of_sample(p, s, nl);
    if (fi < 0)
        return -1;
    if (family_enter(p, fi) < 0)
        return -1;
    const char *name = s;
    s += nl;
    prom_label *labels = NULL;
    size_t n_labels = 0;
    if (*s == '{' && parse_labels(p, &s, &labels, &n_labels) < 0)
        return -1;
    if (*s != ' ' && *s != '\t') {
        free_labels(labels, n_labels);
        return fail(p, "expected a blank before the value");
    }
    s = skip_blanks(s);
    size_t vl = 0;
    while (s[vl] && s[vl] != ' ' && s[vl] != '\t')
        vl++;
    double v;
    if (parse_value(s, vl, &v) < 0) {
        free_labels(labels, n_labels);
        return fail(p, "'%.*s' is not a sample value", (int)vl, s);
    }
    s = skip_blanks(s + vl);
    if (*s) {
        size_t tl = 0;
        if (s[0] == '-')
            tl++;
        while (isdigit((unsigned char)s[tl]))
            tl++;
        if (tl == 0 || (tl == 1 && s[0] == '-') || *skip_blanks(s + tl) != '\0') {
            free_labels(labels, n_labels);
            return fail(p, "'%s' after the value is not an integer timestamp", s);
        }
    }
    if (p->fam[fi].type == F_COUNTER && (isnan(v) || v < 0)) {
        free_labels(labels, n_labels);
        return fail(p, "counter '%s' has the value %g", p->fam[fi].name, v);
    }
    char *nm = strndup(name, nl);
    char *key = nm ? series_key(nm, labels, n_labels, 0) : NULL;
    if (!key || !nm) {
        free(key);
        free(nm);
        free_labels(labels, n_labels);
        return fail(p, "out of memory");
    }
    for (size_t i = 0; key && i < p->doc.n; i++) {
        if (!strcmp(p->keys[i], key)) {
            int other = p->doc.samples[i].line;
            free(key);
            free(nm);
            free_labels(labels, n_labels);
            return fail(p, "the same series as line %d", other);
        }
    }
    if (p->doc.n == p->cap_samples) {
        size_t cap = p->cap_samples ? p->cap_samples * 2 : 128;
        prom_sample *ns = realloc(p->doc.samples, cap * sizeof *ns);
        char **nk = realloc(p->keys, cap * sizeof *nk);
        size_t *nf = realloc(p->fam_of, cap * sizeof *nf);
        if (ns)
            p->doc.samples = ns;
        if (nk)
            p->keys = nk;
        if (nf)
            p->fam_of = nf;
        if (!ns || !nk || !nf) {
            free(key);
            free(nm);
            free_labels(labels, n_labels);
            return fail(p, "out of memory");
        }
        p->cap_samples = cap;
    }
    prom_sample *smp = &p->doc.samples[p->doc.n];
    smp->name = nm;
    smp->labels = labels;
    smp->n_labels = n_labels;
    smp->value = v;
    smp->line = p->line;
    p->keys[p->doc.n] = key;
    p->fam_of[p->doc.n] = (size_t)fi;
    p->doc.n++;
    return 0;
}

static const char *label_value(const prom_sample *s, const char *name)
{
    for (size_t i = 0; i < s->n_labels; i++)
        if (!strcmp(s->labels[i].name, name))
            return s->labels[i].value;
    return NULL;
}

static int suffix_is(const prom_sample *s, const char *fam, const char *suffix)
{
    size_t fl = strlen(fam);
    return !strncmp(s->name, fam, fl) && !strcmp(s->name + fl, suffix);
}

/* The histogram rules, per family and per series (labels without le). */
static int check_histograms(parser *p)
{
    for (size_t fi = 0; fi < p->n_fam; fi++) {
        if (p->fam[fi].type != F_HISTOGRAM)
            continue;
        const char *fam = p->fam[fi].name;
        for (size_t i = 0; i < p->doc.n; i++) {
            const prom_sample *s = &p->doc.samples[i];
            if (p->fam_of[i] != fi)
                continue;
            p->line = s->line;
            int is_bucket = suffix_is(s, fam, "_bucket");
            if (is_bucket && !label_value(s, "le"))
                return fail(p, "histogram bucket without an le label");
            if (!is_bucket && label_value(s, "le"))
                return fail(p, "%s has an le label", s->name);
        }
        /* Each series is checked from its first sample of any kind. */
        for (size_t i = 0; i < p->doc.n; i++) {
            if (p->fam_of[i] != fi)
                continue;
            const prom_sample *first = &p->doc.samples[i];
            char *gk = series_key(fam, first->labels, first->n_labels, 1);
            if (!gk)
                return fail(p, "out of memory");
            int seen_before = 0;
            for (size_t j = 0; j < i && !seen_before; j++) {
                if (p->fam_of[j] != fi)
                    continue;
                const prom_sample *o = &p->doc.samples[j];
                char *ok = series_key(fam, o->labels, o->n_labels, 1);
                seen_before = ok && !strcmp(ok, gk);
                free(ok);
            }
            if (seen_before) {
                free(gk);
                continue;
            }
            double prev_le = -INFINITY, prev_count = 0, inf_count = NAN;
            int n_buckets = 0, have_sum = 0, have_count = 0, last_inf = 0;
            double count = NAN;
            for (size_t j = i; j < p->doc.n; j++) {
                if (p->fam_of[j] != fi)
                    continue;
                const prom_sample *o = &p->doc.samples[j];
                char *ok = series_key(fam, o->labels, o->n_labels, 1);
                int same = ok && !strcmp(ok, gk);
                free(ok);
                if (!same)
                    continue;
                p->line = o->line;
                if (suffix_is(o, fam, "_bucket")) {
                    double le;
                    const char *les = label_value(o, "le");
                    if (parse_value(les, strlen(les), &le) < 0 || isnan(le)) {
                        free(gk);
                        return fail(p, "le=\"%s\" is not a number", les);
                    }
                    if (last_inf) {
                        free(gk);
                        return fail(p, "bucket after the +Inf bucket");
                    }
                    if (n_buckets && le <= prev_le) {
                        free(gk);
                        return fail(p, "bucket le=\"%s\" does not grow", les);
                    }
                    if (isnan(o->value) || o->value < prev_count) {
                        free(gk);
                        return fail(p, "bucket le=\"%s\" has count %g, less than the %g before",
                                    les, o->value, prev_count);
                    }
                    prev_le = le;
                    prev_count = o->value;
                    n_buckets++;
                    if (isinf(le) && le > 0) {
                        last_inf = 1;
                        inf_count = o->value;
                    }
                } else if (suffix_is(o, fam, "_sum")) {
                    have_sum = 1;
                } else if (suffix_is(o, fam, "_count")) {
                    have_count = 1;
                    count = o->value;
                }
            }
            p->line = first->line;
            free(gk);
            if (n_buckets == 0)
                return fail(p, "histogram series of %s without buckets", fam);
            if (!last_inf)
                return fail(p, "histogram series of %s does not end with le=\"+Inf\"", fam);
            if (!have_sum || !have_count)
                return fail(p, "histogram series of %s without _sum or _count", fam);
            if (count != inf_count)
                return fail(p, "%s_count is %g but the +Inf bucket is %g", fam, count, inf_count);
        }
    }
    return 0;
}

static void parser_free(parser *p)
{
    for (size_t i = 0; i < p->n_fam; i++)
        free(p->fam[i].name);
    free(p->fam);
    for (size_t i = 0; i < p->doc.n; i++)
        free(p->keys[i]);
    free(p->keys);
    free(p->fam_of);
}

int prom_parse(prom_doc *doc, const char *text, char *err, size_t err_size)
{
    parser p;
    memset(&p, 0, sizeof p);
    p.text = text;
    p.err = err;
    p.err_size = err_size;
    p.current = -1;
    doc->samples = NULL;
    doc->n = 0;
    if (err_size)
        err[0] = '\0';
    int rc = 0;
    size_t len = strlen(text);
    if (len && text[len - 1] != '\n') {
        const char *last = strrchr(text, '\n');
        p.line = 1;
        for (const char *c = text; last && c <= last; c++)
            p.line += *c == '\n';
        rc = fail(&p, "the last line does not end with a newline");
    }
    for (const char *s = text; rc == 0 && *s;) {
        const char *nl = strchr(s, '\n');
        size_t ll = nl ? (size_t)(nl - s) : strlen(s);
        char *line = strndup(s, ll);
        p.line++;
        if (!line)
            rc = fail(&p, "out of memory");
        else if (memchr(s, '\0', ll))
            rc = fail(&p, "NUL byte");
        else if (line[0] == '#')
            rc = comment_line(&p, line);
        else if (*skip_blanks(line) != '\0')
            rc = sample_line(&p, line);
        free(line);
        s += ll + (nl ? 1 : 0);
    }
    if (rc == 0)
        rc = check_histograms(&p);
    parser_free(&p); /* the keys; the samples stay in p.doc */
    if (rc == 0)
        *doc = p.doc;
    else
        prom_doc_free(&p.doc);
    return rc;
}

void prom_doc_free(prom_doc *doc)
{
    for (size_t i = 0; i < doc->n; i++) {
        free(doc->samples[i].name);
        free_labels(doc->samples[i].labels, doc->samples[i].n_labels);
    }
    free(doc->samples);
    doc->samples = NULL;
    doc->n = 0;
}

double prom_get(const prom_doc *doc, const char *name, ...)
{
    const char *k[32], *v[32];
    size_t n = 0;
    va_list ap;
    va_start(ap, name);
    for (const char *key = va_arg(ap, const char *); key && n < 32;
         key = va_arg(ap, const char *)) {
        k[n] = key;
        v[n] = va_arg(ap, const char *);
        n++;
    }
    va_end(ap);
    for (size_t i = 0; i < doc->n; i++) {
        const prom_sample *s = &doc->samples[i];
        if (strcmp(s->name, name) != 0 || s->n_labels != n)
            continue;
        size_t matched = 0;
        for (size_t j = 0; j < n; j++) {
            const char *have = label_value(s, k[j]);
            matched += have && !strcmp(have, v[j]);
        }
        if (matched == n)
            return s->value;
    }
    return NAN;
}

size_t prom_count(const prom_doc *doc, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < doc->n; i++)
        n += !strcmp(doc->samples[i].name, name);
    return n;
}
