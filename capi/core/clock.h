/* Time in nanoseconds since the Unix epoch (wall clock, for records) and on
 * the monotonic clock (for delays and waits). */
#ifndef TASKER_CORE_CLOCK_H
#define TASKER_CORE_CLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

static inline int64_t tk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t tk_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Writes "2026-11-23T17:11:07.123456Z" (28 bytes with the NUL). */
#define TK_ISO_BUFSIZE 32
void tk_iso8601(char out[TK_ISO_BUFSIZE], int64_t unix_ns);

#endif
