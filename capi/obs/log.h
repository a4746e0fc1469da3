/* Structured JSON logging configured by log.level and log.sink. */
#ifndef TASKER_OBS_LOG_H
#define TASKER_OBS_LOG_H

struct tasker_coordinator;

/* Starts logging if log.level is not "off" (coordinator open). */
int tk_log_open(struct tasker_coordinator *c);

#endif
