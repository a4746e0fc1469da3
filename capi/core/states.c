#include "core/states.h"

#define B(s) (1u << (s))

/* Allowed successor states, one bit mask per source state. */
static const unsigned task_next[] = {
    [TASKER_TASK_PENDING] = B(TASKER_TASK_RUNNING) | B(TASKER_TASK_CANCELLED) |
                            B(TASKER_TASK_ERROR) | B(TASKER_TASK_COMPLETE),
    [TASKER_TASK_RUNNING] = B(TASKER_TASK_COMPLETE) | B(TASKER_TASK_ERROR) |
                            B(TASKER_TASK_CANCELLED),
    [TASKER_TASK_COMPLETE] = 0,
    [TASKER_TASK_ERROR] = B(TASKER_TASK_RUNNING) | B(TASKER_TASK_RESOLVED_MANUALLY) |
                          B(TASKER_TASK_CANCELLED),
    [TASKER_TASK_CANCELLED] = 0,
    [TASKER_TASK_RESOLVED_MANUALLY] = 0,
};

static const unsigned step_next[] = {
    [TASKER_STEP_PENDING] = B(TASKER_STEP_ENQUEUED) | B(TASKER_STEP_CANCELLED) |
                            B(TASKER_STEP_SKIPPED),
    [TASKER_STEP_ENQUEUED] = B(TASKER_STEP_IN_PROGRESS) | B(TASKER_STEP_CANCELLED),
    [TASKER_STEP_IN_PROGRESS] = B(TASKER_STEP_COMPLETE) | B(TASKER_STEP_WAITING_FOR_RETRY) |
                                B(TASKER_STEP_ERROR) | B(TASKER_STEP_CANCELLED) |
                                B(TASKER_STEP_ENQUEUED),
    [TASKER_STEP_WAITING_FOR_RETRY] = B(TASKER_STEP_ENQUEUED) | B(TASKER_STEP_CANCELLED),
    [TASKER_STEP_COMPLETE] = 0,
    [TASKER_STEP_ERROR] = B(TASKER_STEP_RESOLVED_MANUALLY) | B(TASKER_STEP_ENQUEUED) |
                          B(TASKER_STEP_CANCELLED),
    [TASKER_STEP_CANCELLED] = 0,
    [TASKER_STEP_RESOLVED_MANUALLY] = 0,
    [TASKER_STEP_SKIPPED] = 0,
};

bool tk_task_transition_ok(tasker_task_state from, tasker_task_state to)
{
    if ((unsigned)from > TASKER_TASK_RESOLVED_MANUALLY || (unsigned)to > TASKER_TASK_RESOLVED_MANUALLY)
        return false;
    return (task_next[from] & B(to)) != 0;
}

bool tk_step_transition_ok(tasker_step_state from, tasker_step_state to)
{
    if ((unsigned)from > TASKER_STEP_SKIPPED || (unsigned)to > TASKER_STEP_SKIPPED)
        return false;
    return (step_next[from] & B(to)) != 0;
}

bool tk_step_state_is_final(tasker_step_state s)
{
    return s == TASKER_STEP_COMPLETE || s == TASKER_STEP_CANCELLED ||
           s == TASKER_STEP_RESOLVED_MANUALLY || s == TASKER_STEP_SKIPPED;
}

const char *tasker_task_state_name(tasker_task_state state)
{
    static const char *const names[] = {"pending", "running", "complete", "error", "cancelled",
                                        "resolved_manually"};
    return (unsigned)state < sizeof names / sizeof names[0] ? names[state] : NULL;
}

const char *tasker_step_state_name(tasker_step_state state)
{
    static const char *const names[] = {"pending", "enqueued", "in_progress",
                                        "waiting_for_retry", "complete", "error",
                                        "cancelled", "resolved_manually", "skipped"};
    return (unsigned)state < sizeof names / sizeof names[0] ? names[state] : NULL;
}

int tasker_task_state_is_final(tasker_task_state state)
{
    return state == TASKER_TASK_COMPLETE || state == TASKER_TASK_ERROR ||
           state == TASKER_TASK_CANCELLED || state == TASKER_TASK_RESOLVED_MANUALLY;
}

const char *tk_reason_name(tk_reason r)
{
    static const char *const names[TK_R_COUNT] = {
        [TK_R_CREATED] = "created",
        [TK_R_STARTED] = "started",
        [TK_R_COMPLETED] = "completed",
        [TK_R_FAILED] = "failed",
        [TK_R_CANCELLED] = "cancelled",
        [TK_R_MANUAL_RETRY] = "manual_retry",
        [TK_R_MANUAL_RESOLVE] = "manual_resolve",
        [TK_R_DEPENDENCIES_MET] = "dependencies_met",
        [TK_R_CLAIMED] = "claimed",
        [TK_R_SUCCEEDED] = "succeeded",
        [TK_R_RETRY_SCHEDULED] = "retry_scheduled",
        [TK_R_RETRY_DUE] = "retry_due",
        [TK_R_RETRIES_EXHAUSTED] = "retries_exhausted",
        [TK_R_PERMANENT_FAILURE] = "permanent_failure",
        [TK_R_RELEASED] = "released",
        [TK_R_TIMED_OUT] = "timed_out",
    };
    return (unsigned)r < TK_R_COUNT ? names[r] : "unknown";
}
