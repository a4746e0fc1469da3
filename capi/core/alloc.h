/* Allocation wrappers.  Every allocation the library makes goes through these
 * so that tests can make the n-th one fail and check that each failure is
 * reported as TASKER_ENOMEM and leaks nothing. */
#ifndef TASKER_CORE_ALLOC_H
#define TASKER_CORE_ALLOC_H

#include <stddef.h>

void *tk_malloc(size_t n);
void *tk_calloc(size_t count, size_t size);
void *tk_realloc(void *p, size_t n);
char *tk_strdup(const char *s);
char *tk_strndup(const char *s, size_t n);
void tk_free(void *p);

/*
 * Test hook (internal, linkable from the static library only): after `n`
 * more successful allocations, every allocation fails until the hook is
 * reset with a negative `n`.  Returns how many allocations have been made
 * since the last call.  Thread-safe.
 */
long tasker__alloc_fail_after(long n);

#endif
