#include "core/clock.h"

#include <stdio.h>

void tk_iso8601(char out[TK_ISO_BUFSIZE], int64_t unix_ns)
{
    time_t sec = (time_t)(unix_ns / 1000000000);
    long usec = (long)((unix_ns % 1000000000) / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t n = strftime(out, TK_ISO_BUFSIZE, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, TK_ISO_BUFSIZE - n, ".%06ldZ", usec);
}
