/* The task and step state machines (DESIGN.md §4) and transition reasons. */
#ifndef TASKER_CORE_STATES_H
#define TASKER_CORE_STATES_H

#include <stdbool.h>

#include "tasker.h"

bool tk_task_transition_ok(tasker_task_state from, tasker_task_state to);
bool tk_step_transition_ok(tasker_step_state from, tasker_step_state to);
bool tk_step_state_is_final(tasker_step_state s);

typedef enum tk_reason {
    TK_R_CREATED,
    TK_R_STARTED,
    TK_R_COMPLETED,
    TK_R_FAILED,
    TK_R_CANCELLED,
    TK_R_MANUAL_RETRY,
    TK_R_MANUAL_RESOLVE,
    TK_R_DEPENDENCIES_MET,
    TK_R_CLAIMED,
    TK_R_SUCCEEDED,
    TK_R_RETRY_SCHEDULED,
    TK_R_RETRY_DUE,
    TK_R_RETRIES_EXHAUSTED,
    TK_R_PERMANENT_FAILURE,
    TK_R_RELEASED,
    TK_R_TIMED_OUT,
    TK_R_COUNT
} tk_reason;

const char *tk_reason_name(tk_reason r);

#endif
