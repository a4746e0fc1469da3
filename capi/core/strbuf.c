#include "core/strbuf.h"

#include <stdarg.h>
#include <stdio.h>

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
