/* Time-ordered UUIDs (version 7 layout) whose random bits come from libuuid. */
#ifndef TASKER_CORE_UUID_H
#define TASKER_CORE_UUID_H

#include <stdint.h>

#include "tasker.h"

/* Fills `out` with a new UUID and `text` (if not NULL) with its text form. */
void tk_uuid_new(uint8_t out[16], char text[TASKER_UUID_BUFSIZE]);
/* The same with the current time already read (ns since the epoch). */
void tk_uuid_new_at(uint8_t out[16], char text[TASKER_UUID_BUFSIZE], int64_t unix_ns);

/* Two lowercase hex digits for each byte value (byte b at 2 * b). */
extern const char tk_hex_pairs[513];

/* Writes the 36-character text form and a NUL. */
void tk_uuid_format(const uint8_t in[16], char text[TASKER_UUID_BUFSIZE]);

/* Parses the text form; returns 0 on success, -1 if malformed. */
int tk_uuid_parse(uint8_t out[16], const char *text);

/* A per-thread pseudo-random 64-bit number (for jitter), seeded from libuuid. */
uint64_t tk_random_u64(void);

#endif
