#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Fixed-size thread-local buffers: nothing to free when a thread exits, so a
 * thread that never calls tasker again leaks nothing. */
#define MSG_MAX 1024
#define CTX_MAX 8192

static _Thread_local struct {
    tasker_error err;
    char message[MSG_MAX];
    char context[CTX_MAX];
} tls;

static void ensure_init(void)
{
    if (tls.err.version == 0) {
        tls.err.version = TASKER_ERROR_VERSION;
        tls.err.message = tls.message;
        tls.err.context_json = tls.context;
        strcpy(tls.context, "{}");
    }
}

int tk_err(int code, tasker_error_category cat, json_t *context, const char *fmt, ...)
{
    ensure_init();
    tls.err.code = code;
    tls.err.category = cat;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls.message, sizeof tls.message, fmt, ap);
    va_end(ap);
    strcpy(tls.context, "{}");
    if (context) {
        size_t n = json_dumpb(context, tls.context, sizeof tls.context - 1, JSON_COMPACT);
        if (n == 0 || n >= sizeof tls.context - 1)
            snprintf(tls.context, sizeof tls.context, "{\"truncated\":true}");
        else
            tls.context[n] = '\0';
        json_decref(context);
    }
    return code;
}

const tasker_error *tasker_error_last(void)
{
    ensure_init();
    return &tls.err;
}

void tasker_error_clear(void)
{
    ensure_init();
    tls.err.code = TASKER_OK;
    tls.err.category = TASKER_CATEGORY_NONE;
    tls.message[0] = '\0';
    strcpy(tls.context, "{}");
}

const char *tasker_strerror(int code)
{
    switch (code) {
    case TASKER_OK: return "TASKER_OK: success";
    case TASKER_EINVAL: return "TASKER_EINVAL: invalid argument";
    case TASKER_ENOMEM: return "TASKER_ENOMEM: out of memory";
    case TASKER_ENOTFOUND: return "TASKER_ENOTFOUND: not found";
    case TASKER_EEXIST: return "TASKER_EEXIST: already exists with different content";
    case TASKER_ESTATE: return "TASKER_ESTATE: illegal state transition";
    case TASKER_ETEMPLATE: return "TASKER_ETEMPLATE: invalid template";
    case TASKER_ETIMEOUT: return "TASKER_ETIMEOUT: timed out";
    case TASKER_ECLOSED: return "TASKER_ECLOSED: coordinator closed or stopping";
    case TASKER_ESTALE: return "TASKER_ESTALE: lease lost, completion refused";
    case TASKER_EVERSION: return "TASKER_EVERSION: ABI version mismatch";
    case TASKER_EHANDLER: return "TASKER_EHANDLER: no such handler";
    case TASKER_ECONFIG: return "TASKER_ECONFIG: invalid configuration";
    case TASKER_EDATABASE: return "TASKER_EDATABASE: database error";
    case TASKER_EBUSY: return "TASKER_EBUSY: resource busy";
    case TASKER_ENOTSUP: return "TASKER_ENOTSUP: not supported";
    case TASKER_EINTERNAL: return "TASKER_EINTERNAL: internal error";
    case TASKER_EIO: return "TASKER_EIO: operating-system call failed";
    default: return "unknown tasker status";
    }
}

const char *tasker_error_category_name(tasker_error_category category)
{
    switch (category) {
    case TASKER_CATEGORY_NONE: return "none";
    case TASKER_CATEGORY_ARGUMENT: return "argument";
    case TASKER_CATEGORY_CONFIG: return "config";
    case TASKER_CATEGORY_TEMPLATE: return "template";
    case TASKER_CATEGORY_STATE: return "state";
    case TASKER_CATEGORY_DATABASE: return "database";
    case TASKER_CATEGORY_QUEUE: return "queue";
    case TASKER_CATEGORY_HANDLER: return "handler";
    case TASKER_CATEGORY_NETWORK: return "network";
    case TASKER_CATEGORY_INTERNAL: return "internal";
    }
    return "unknown";
}

void tasker_free(void *ptr)
{
    free(ptr);
}

const char *tasker_version(void)
{
    return TASKER_VERSION_STRING;
}

int tasker_abi_version(void)
{
    return TASKER_ABI_VERSION;
}

int tasker_abi_check(int binding_abi)
{
    if (binding_abi == TASKER_ABI_VERSION)
        return TASKER_OK;
    return tk_err(TASKER_EVERSION, TASKER_CATEGORY_CONFIG,
                  json_pack("{s:i, s:i, s:s}", "binding_abi", binding_abi, "library_abi",
                            TASKER_ABI_VERSION, "library_version", TASKER_VERSION_STRING),
                  "binding built for tasker ABI %d but the loaded libtasker %s provides ABI %d; "
                  "rebuild the binding against this library's include/tasker.h",
                  binding_abi, TASKER_VERSION_STRING, TASKER_ABI_VERSION);
}
