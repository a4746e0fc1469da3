#include "core/alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* -1: never fail.  Otherwise the number of allocations still allowed. */
static atomic_long fail_budget = -1;
static atomic_long alloc_count = 0;
/* Counting costs a shared atomic per allocation: only once a test asked. */
static atomic_int hook_used = 0;

static int should_fail(void)
{
    if (!atomic_load_explicit(&hook_used, memory_order_relaxed))
        return 0;
    atomic_fetch_add_explicit(&alloc_count, 1, memory_order_relaxed);
    long b = atomic_load_explicit(&fail_budget, memory_order_relaxed);
    if (b < 0)
        return 0;
    for (;;) {
        if (b == 0)
            return 1;
        if (atomic_compare_exchange_weak(&fail_budget, &b, b - 1))
            return 0;
        if (b < 0)
            return 0;
    }
}

long tasker__alloc_fail_after(long n)
{
    atomic_store(&hook_used, 1);
    atomic_store(&fail_budget, n < 0 ? -1 : n);
    return atomic_exchange(&alloc_count, 0);
}

void *tk_malloc(size_t n)
{
    return should_fail() ? NULL : malloc(n ? n : 1);
}

void *tk_calloc(size_t count, size_t size)
{
    return should_fail() ? NULL : calloc(count ? count : 1, size ? size : 1);
}

void *tk_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : realloc(p, n ? n : 1);
}

char *tk_strndup(const char *s, size_t n)
{
    char *d = tk_malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

char *tk_strdup(const char *s)
{
    return tk_strndup(s, strlen(s));
}

void tk_free(void *p)
{
    free(p);
}

_Thread_local int tk_hash_oom;
