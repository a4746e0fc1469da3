// The public header as C++11 (extern "C", the _INIT macros as aggregates).
// Compiled alone with -pedantic -Werror by the header_cxx11 test, and linked
// and run as test_header_cpp so a C++ program really reaches the C symbols.
#include "tasker.h"

#include <cstdio>
#include <cstring>

static int failures = 0;

static void check(bool ok, const char *what)
{
    if (!ok) {
        std::printf("FAIL: %s\n", what);
        failures++;
    }
}

int main()
{
    tasker_step_options opts = TASKER_STEP_OPTIONS_INIT;
    tasker_step_options opts2;
    std::memset(&opts2, 0xff, sizeof opts2);
    check(tasker_step_options_init(&opts2, TASKER_STEP_OPTIONS_VERSION) == TASKER_OK,
          "tasker_step_options_init");
    check(opts.version == opts2.version && opts.max_attempts == opts2.max_attempts &&
              opts.backoff == opts2.backoff && opts.base_ms == opts2.base_ms &&
              opts.max_ms == opts2.max_ms && opts.jitter == opts2.jitter &&
              opts.timeout_ms == opts2.timeout_ms,
          "TASKER_STEP_OPTIONS_INIT equals tasker_step_options_init()");

    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    check(req.version == TASKER_TASK_REQUEST_VERSION && req.ns == nullptr, "TASKER_TASK_REQUEST_INIT");
    tasker_failure failure = TASKER_FAILURE_INIT;
    check(failure.retryable == 1 && failure.retry_after_ms == -1, "TASKER_FAILURE_INIT");

    check(std::strcmp(tasker_version(), TASKER_VERSION_STRING) == 0, "tasker_version");
    check(tasker_abi_check(TASKER_ABI_VERSION) == TASKER_OK, "tasker_abi_check");

    tasker_coordinator *coord = nullptr;
    check(tasker_coordinator_open(&coord, nullptr) == TASKER_OK && coord != nullptr,
          "tasker_coordinator_open");
    const char *tmpl = "{\"namespace\":\"cpp\",\"name\":\"t\",\"steps\":[{\"name\":\"a\"}]}";
    check(tasker_template_register_json(coord, tmpl, 0) == TASKER_OK, "register");
    check(tasker_coordinator_close(coord) == TASKER_OK, "tasker_coordinator_close");

    if (failures == 0)
        std::printf("header_cpp: all checks passed\n");
    return failures == 0 ? 0 : 1;
}
