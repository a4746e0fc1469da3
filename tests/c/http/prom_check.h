/*
 * prom_check.h - a checker for the Prometheus text exposition format 0.0.4.
 *
 * Checks what a scraper relies on:
 *  - every line ends with '\n' (also the last);
 *  - "# HELP name text" and "# TYPE name type" name a valid metric name, TYPE
 *    is one of counter, gauge, histogram, summary, untyped, each appears at
 *    most once per family and TYPE comes before the family's samples; HELP
 *    text uses only the escapes \\ and \n;
 *  - every other non-comment, non-empty line is `name{labels} value
 *    [timestamp]`: a valid metric name, labels `name="value"` with valid label
 *    names, no label twice, values using only the escapes \\ \" \n; the value
 *    a float (or +Inf, -Inf, NaN), the timestamp an integer;
 *  - every sample belongs to a family declared with TYPE (for histograms the
 *    _bucket, _sum and _count series; for summaries _sum and _count), and a
 *    family's lines are not interleaved with another family's;
 *  - histogram buckets carry an `le` label, grow with le and never decrease
 *    in count, end with le="+Inf", and _count equals the +Inf bucket.
 */
#ifndef TASKER_TEST_PROM_CHECK_H
#define TASKER_TEST_PROM_CHECK_H

#include <stddef.h>

/* 0 when `text` is valid; -1 with "line N: problem" in `err` otherwise.
 * `samples_out`, if not NULL, receives the number of sample lines. */
int prom_check(const char *text, size_t *samples_out, char *err, size_t err_size);

/*
 * The value of the sample whose line starts with exactly `series` (name and
 * labels as printed, e.g. `tasker_queue_depth{namespace="shop"}`), or -1.0
 * when there is none.  For tests that check a number, after prom_check.
 */
double prom_value(const char *text, const char *series);

#endif
