/* Retry delays from a step's policy. */
#ifndef TASKER_CORE_BACKOFF_H
#define TASKER_CORE_BACKOFF_H

#include <stdint.h>

#include "tasker.h"

/* Delay in ms before the next attempt after `attempts_made` (>= 1) attempts.
 * `retry_after_ms` >= 0 replaces the computed delay; both are capped by
 * max_ms.  `random01` is a number in [0, 1) used for jitter. */
uint64_t tk_backoff_ms(const tasker_step_options *o, uint32_t attempts_made,
                       int64_t retry_after_ms, double random01);

/* Checks a policy; on failure writes the offending field and its allowed
 * range to `field`/`why` and returns -1. */
int tk_options_check(const tasker_step_options *o, const char **field, const char **why);

#endif
