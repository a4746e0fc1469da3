/* A growable text buffer for building output with printf-style calls. */
#ifndef TASKER_CORE_STRBUF_H
#define TASKER_CORE_STRBUF_H

#include <stddef.h>

typedef struct tk_sb {
    char *buf;
    size_t len, cap;
    int oom; /* an allocation failed; the text is incomplete */
} tk_sb;

/* Starts an empty buffer; sets oom if the first allocation fails. */
void tk_sb_init(tk_sb *b, size_t cap);
void tk_sb_printf(tk_sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* `msg` with every occurrence of `secret` (NULL or "": none) replaced by
 * "***", newlines turned into spaces and trailing spaces dropped: one line
 * fit for a log or an error message.  tk_malloc'ed; NULL when out of
 * memory. */
char *tk_scrub(const char *msg, const char *secret);

#endif
