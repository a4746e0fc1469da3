/* uthash, with its allocations going through tk_malloc (so the fault-injection
 * test reaches them) and without its default of exiting the process when an
 * allocation fails: a failed table creation sets tk_hash_oom instead and the
 * element is not added.  Every HASH_ADD site clears the flag before and
 * checks it after. */
#ifndef TASKER_CORE_HASH_H
#define TASKER_CORE_HASH_H

#include "core/alloc.h"

extern _Thread_local int tk_hash_oom;

#define uthash_malloc(sz) tk_malloc(sz)
#define uthash_free(ptr, sz) tk_free(ptr)
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(obj) (tk_hash_oom = 1)

#include <uthash.h>

#endif
