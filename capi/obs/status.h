/* Recent failures kept for the status view. */
#ifndef TASKER_OBS_STATUS_H
#define TASKER_OBS_STATUS_H

#include <stdint.h>

#include "tasker.h"

#define TK_RECENT_FAILURES 50

struct tk_reg;
struct tk_step;
struct tk_failure_rec;
struct tasker_coordinator;

typedef struct tk_recent_failure {
    int64_t at;
    uint32_t attempt;
    const struct tk_reg *reg;
    uint32_t step;
    char task_uuid[TASKER_UUID_BUFSIZE];
    char *error_class, *message;
} tk_recent_failure;

/* Lock held. */
void tk_status_record_failure(struct tasker_coordinator *c, const struct tk_step *s,
                              const struct tk_failure_rec *f);
void tk_status_free(struct tasker_coordinator *c);

#endif
