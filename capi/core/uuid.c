#include "core/uuid.h"

#include <string.h>
#include <uuid/uuid.h>

#include "core/clock.h"

/*
 * Layout (RFC 9562 version 7): 48-bit Unix milliseconds, version nibble,
 * 12-bit counter, variant bits, 62 random bits.  Asking the kernel for fresh
 * random bytes on every UUID costs a system call each, so each thread draws
 * its 62 random bits from libuuid once per millisecond and counts UUIDs made
 * within that millisecond in the 12-bit field; when the counter runs out it
 * draws new random bits.  UUIDs from one thread are thus unique, and two
 * threads collide only if their 62 random bits do.
 */
static _Thread_local struct {
    uint64_t ms;
    uint32_t counter;
    uint8_t tail[8];
    int seeded;
} gen;

static void reseed(void)
{
    uuid_t r;
    uuid_generate_random(r);
    memcpy(gen.tail, r + 8, 8);
    gen.counter = (uint32_t)(r[6] & 0x03) << 8 | r[7]; /* random start, room to count */
    gen.seeded = 1;
}

void tk_uuid_new(uint8_t out[16], char text[TASKER_UUID_BUFSIZE])
{
    tk_uuid_new_at(out, text, tk_now_ns());
}

void tk_uuid_new_at(uint8_t out[16], char text[TASKER_UUID_BUFSIZE], int64_t unix_ns)
{
    uint64_t ms = (uint64_t)(unix_ns / 1000000);
    if (!gen.seeded || ms != gen.ms) {
        gen.ms = ms;
        reseed();
    } else if (++gen.counter > 0x0fff) {
        reseed();
    }
    out[0] = (uint8_t)(ms >> 40);
    out[1] = (uint8_t)(ms >> 32);
    out[2] = (uint8_t)(ms >> 24);
    out[3] = (uint8_t)(ms >> 16);
    out[4] = (uint8_t)(ms >> 8);
    out[5] = (uint8_t)ms;
    out[6] = (uint8_t)(0x70 | ((gen.counter >> 8) & 0x0f));
    out[7] = (uint8_t)gen.counter;
    memcpy(out + 8, gen.tail, 8);
    out[8] = (uint8_t)(0x80 | (out[8] & 0x3f));
    if (text)
        tk_uuid_format(out, text);
}

/* Two hex digits per byte from a table, the dashes at fixed places: this
 * runs for every task, step and event, so it is kept branch-free. */
const char tk_hex_pairs[513] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

void tk_uuid_format(const uint8_t in[16], char text[TASKER_UUID_BUFSIZE])
{
    static const uint8_t at[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};
    for (int i = 0; i < 16; i++)
        memcpy(text + at[i], tk_hex_pairs + 2 * in[i], 2);
    text[8] = text[13] = text[18] = text[23] = '-';
    text[36] = '\0';
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Plain hex decoding of the 8-4-4-4-12 form: every task call parses a UUID,
 * and libuuid's parser (strtoul per byte) costs ten times more. */
int tk_uuid_parse(uint8_t out[16], const char *text)
{
    if (!text)
        return -1;
    int j = 0;
    for (int i = 0; i < TASKER_UUID_STRLEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (text[i] != '-')
                return -1;
            continue;
        }
        int hi = hexval(text[i]), lo = hi < 0 ? -1 : hexval(text[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[j++] = (uint8_t)(hi << 4 | lo);
        i++;
    }
    return text[TASKER_UUID_STRLEN] == '\0' ? 0 : -1;
}

static _Thread_local uint64_t rng_state;

uint64_t tk_random_u64(void)
{
    if (rng_state == 0) {
        uuid_t r;
        uuid_generate_random(r);
        memcpy(&rng_state, r, sizeof rng_state);
        rng_state |= 1;
    }
    /* xorshift64*: statistically fine for jitter; not for secrets. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}
