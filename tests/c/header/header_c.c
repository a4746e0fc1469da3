/*
 * The public header must stand alone: nothing included before it, strict C11,
 * -Wall -Wextra -pedantic -Werror.  The declarations below use every public
 * type and initialiser macro so a change that breaks them in C shows up here.
 */
#include "tasker.h"

int tasker_header_probe(void);

int tasker_header_probe(void)
{
    tasker_step_options opts = TASKER_STEP_OPTIONS_INIT;
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    tasker_failure failure = TASKER_FAILURE_INIT;
    tasker_handler_fn fn = 0;
    tasker_error_category cat = TASKER_CATEGORY_NONE;
    tasker_task_state ts = TASKER_TASK_PENDING;
    tasker_step_state ss = TASKER_STEP_SKIPPED;
    tasker_backoff b = TASKER_BACKOFF_LINEAR;
    char uuid[TASKER_UUID_BUFSIZE] = {0};
    const tasker_error *e = 0;
    (void)fn;
    (void)e;
    return (int)opts.version + (int)req.version + (int)failure.version + (int)cat + (int)ts +
           (int)ss + (int)b + uuid[0] + TASKER_VERSION_MAJOR + TASKER_ABI_VERSION;
}
