/*
 * obs_prom.h - a parser and checker for the Prometheus text exposition
 * format (version 0.0.4), used by the observability tests to read
 * tasker_metrics_text() output.
 *
 * prom_parse() accepts a text only if a scraper could rely on it:
 *  - every line, the last one included, ends with '\n';
 *  - "# HELP name text" and "# TYPE name type" name valid metric names; TYPE
 *    is counter, gauge, histogram, summary or untyped, is given at most once
 *    per family and before the family's first sample; HELP text uses no
 *    escape other than \\ and \n; other '#' lines are comments;
 *  - every other non-blank line is `name{label="value",...} value [timestamp]`
 *    with a valid metric name, valid label names, no label twice, label values
 *    using only the escapes \\ \" \n, a float value (or +Inf, -Inf, NaN) and
 *    an optional integer timestamp;
 *  - every sample belongs to a family declared with TYPE (a histogram's
 *    _bucket, _sum and _count series, a summary's _sum and _count), a family's
 *    lines are contiguous, and no series (name plus label set) appears twice;
 *  - counters are never negative or NaN;
 *  - each histogram series (its label set without `le`) has buckets with an
 *    `le` label, in increasing `le` order with non-decreasing counts, the
 *    last with le="+Inf", and _sum and _count series, _count equal to the
 *    +Inf bucket.
 */
#ifndef TASKER_TEST_OBS_PROM_H
#define TASKER_TEST_OBS_PROM_H

#include <stddef.h>

typedef struct prom_label {
    char *name;
    char *value; /* unescaped */
} prom_label;

typedef struct prom_sample {
    char *name;
    prom_label *labels;
    size_t n_labels;
    double value;
    int line;
} prom_sample;

typedef struct prom_doc {
    prom_sample *samples;
    size_t n;
} prom_doc;

/*
 * Parses and checks `text`.  Returns 0 with the samples in `doc` (free with
 * prom_doc_free), or -1 with "line N: problem" in `err` and `doc` empty.
 */
int prom_parse(prom_doc *doc, const char *text, char *err, size_t err_size);
void prom_doc_free(prom_doc *doc);

/*
 * The value of the sample named `name` whose label set is exactly the given
 * (label name, value) pairs, ended by NULL; values are compared unescaped.
 * Returns NAN when there is no such sample.
 */
double prom_get(const prom_doc *doc, const char *name, ...);

/* Number of samples named `name` (any labels). */
size_t prom_count(const prom_doc *doc, const char *name);

#endif
