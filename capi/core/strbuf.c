#include "core/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"

void tk_sb_init(tk_sb *b, size_t cap)
{
    b->len = 0;
    b->oom = 0;
    b->cap = cap ? cap : 256;
    b->buf = tk_malloc(b->cap);
    if (b->buf)
        b->buf[0] = '\0';
    else
        b->oom = 1;
}

void tk_sb_printf(tk_sb *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *nb = tk_realloc(b->buf, cap);
        if (!nb) {
            b->oom = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
}

char *tk_scrub(const char *msg, const char *secret)
{
    if (!msg)
        msg = "";
    size_t n = strlen(msg);
    size_t sl = secret ? strlen(secret) : 0;
    /* Worst case every byte of msg starts a secret: bounded by n * 3. */
    char *out = tk_malloc(n * 3 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (sl && n - i >= sl && memcmp(msg + i, secret, sl) == 0) {
            memcpy(out + o, "***", 3);
            o += 3;
            i += sl;
        } else {
            out[o++] = msg[i] == '\n' ? ' ' : msg[i];
            i++;
        }
    }
    while (o && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
    return out;
}
