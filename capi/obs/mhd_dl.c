#define TK_MHD_DL_IMPLEMENTATION
#include "obs/mhd_dl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "core/error.h"

tk_mhd_api tk_mhd;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int load_rc = TASKER_OK;
static char load_error[512];

static void load(void)
{
    void *h = dlopen("libmicrohttpd.so.12", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(load_error, sizeof load_error, "cannot load libmicrohttpd.so.12: %s",
                 dlerror());
        load_rc = TASKER_ENOTSUP;
        return;
    }
#define TK_MHD_SYM(name)                                                                     \
    if (load_rc == TASKER_OK && !(*(void **)&tk_mhd.name = dlsym(h, #name))) {               \
        snprintf(load_error, sizeof load_error, "libmicrohttpd.so.12 has no %s", #name);     \
        load_rc = TASKER_ENOTSUP;                                                            \
    }
    TK_MHD_FUNCTIONS(TK_MHD_SYM)
#undef TK_MHD_SYM
}

int tk_mhd_load(void)
{
    pthread_once(&once, load);
    if (load_rc != TASKER_OK)
        return tk_err(load_rc, TASKER_CATEGORY_NETWORK,
                      json_pack("{s:s}", "library", "libmicrohttpd.so.12"),
                      "HTTP endpoint: %s; install libmicrohttpd12", load_error);
    return TASKER_OK;
}
