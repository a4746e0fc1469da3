#include "core/backoff.h"

#include <math.h>

#define DAY_MS 86400000u

uint64_t tk_backoff_ms(const tasker_step_options *o, uint32_t attempts_made,
                       int64_t retry_after_ms, double random01)
{
    uint64_t d;
    if (retry_after_ms >= 0) {
        d = (uint64_t)retry_after_ms;
        return d > o->max_ms ? o->max_ms : d;
    }
    switch (o->backoff) {
    case TASKER_BACKOFF_LINEAR:
        d = (uint64_t)o->base_ms * attempts_made;
        break;
    case TASKER_BACKOFF_EXPONENTIAL: {
        uint32_t shift = attempts_made > 0 ? attempts_made - 1 : 0;
        d = shift >= 40 ? UINT64_MAX : (uint64_t)o->base_ms << shift;
        break;
    }
    default:
        d = 0;
        break;
    }
    if (d > o->max_ms)
        d = o->max_ms;
    if (o->jitter > 0.0)
        d = (uint64_t)((double)d * (1.0 - o->jitter * random01));
    return d;
}

int tk_options_check(const tasker_step_options *o, const char **field, const char **why)
{
    if (o->max_attempts < 1 || o->max_attempts > 1000) {
        *field = "max_attempts";
        *why = "must be 1..1000";
    } else if (o->backoff != TASKER_BACKOFF_NONE && o->backoff != TASKER_BACKOFF_LINEAR &&
               o->backoff != TASKER_BACKOFF_EXPONENTIAL) {
        *field = "backoff";
        *why = "must be none, linear or exponential";
    } else if (o->base_ms > DAY_MS) {
        *field = "base_ms";
        *why = "must be 0..86400000";
    } else if (o->max_ms < o->base_ms || o->max_ms > DAY_MS) {
        *field = "max_ms";
        *why = "must be base_ms..86400000";
    } else if (!(o->jitter >= 0.0 && o->jitter <= 1.0)) {
        *field = "jitter";
        *why = "must be 0.0..1.0";
    } else if (o->timeout_ms > DAY_MS) {
        *field = "timeout_ms";
        *why = "must be 0..86400000";
    } else {
        return 0;
    }
    return -1;
}
