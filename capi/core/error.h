/* The thread-local structured error behind tasker_error_last(). */
#ifndef TASKER_CORE_ERROR_H
#define TASKER_CORE_ERROR_H

#include "tasker.h"

#include <jansson.h>

/* Records an error for the calling thread and returns `code`.  `context` is a
 * JSON object (stolen: the reference is released here) or NULL. */
int tk_err(int code, tasker_error_category cat, json_t *context, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Shorthands for the most common cases. */
#define tk_einval(...) tk_err(TASKER_EINVAL, TASKER_CATEGORY_ARGUMENT, NULL, __VA_ARGS__)
#define tk_enomem() tk_err(TASKER_ENOMEM, TASKER_CATEGORY_INTERNAL, NULL, "out of memory")

#endif
