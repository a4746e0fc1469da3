/* Configuration: one schema of keys with types, defaults and ranges. */
#ifndef TASKER_CORE_CONFIG_H
#define TASKER_CORE_CONFIG_H

#include <stdint.h>

#include "tasker.h"

typedef enum tk_cfg_key {
    TK_CFG_STORE,
    TK_CFG_DATABASE_URL,
    TK_CFG_TEMPLATE_MAX_JSON_BYTES,
    TK_CFG_TEMPLATE_MAX_STEPS,
    TK_CFG_TASK_MAX_CONTEXT_BYTES,
    TK_CFG_MEMORY_RETAIN_FINISHED,
    TK_CFG_PG_LEASE_MS,
    TK_CFG_PG_POLL_MS,
    TK_CFG_PG_CLAIM_BATCH,
    TK_CFG_PG_FLUSH_MAX,
    TK_CFG_PG_ASYNC_COMPLETE,
    TK_CFG_PG_NAMESPACES,
    TK_CFG_METRICS_ENABLED,
    TK_CFG_LOG_LEVEL,
    TK_CFG_LOG_SINK,
    TK_CFG_BREAKER_FAILURE_THRESHOLD,
    TK_CFG_BREAKER_FAILURE_RATE_PERCENT,
    TK_CFG_BREAKER_WINDOW,
    TK_CFG_BREAKER_OPEN_MS,
    TK_CFG_BREAKER_HALF_OPEN_MAX,
    TK_CFG_BREAKER_SUCCESS_THRESHOLD,
    TK_CFG_COUNT
} tk_cfg_key;

struct tasker_config {
    char *str[TK_CFG_COUNT];  /* string and enum keys */
    int64_t num[TK_CFG_COUNT]; /* integer keys */
};

/* Fills a stack config with the defaults (strings stay NULL = default). */
void tk_config_defaults(struct tasker_config *cfg);
const char *tk_config_str(const struct tasker_config *cfg, tk_cfg_key key);
/* Deep copy into `dst` (defaults first); returns TASKER_OK or TASKER_ENOMEM. */
int tk_config_copy(struct tasker_config *dst, const struct tasker_config *src);
void tk_config_clear(struct tasker_config *cfg);

#endif
