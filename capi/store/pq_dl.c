#define TK_PQ_DL_IMPLEMENTATION
#include "store/pq_dl.h"

#include <dlfcn.h>
#include <pthread.h>

#include "core/error.h"

tk_pq_api tk_pq;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int load_rc = TASKER_OK;
static char load_error[512];

static void load(void)
{
    /* libpq's SONAME has been libpq.so.5 since PostgreSQL 8.2. */
    void *h = dlopen("libpq.so.5", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(load_error, sizeof load_error, "cannot load libpq (libpq.so.5): %s", dlerror());
        load_rc = TASKER_ENOTSUP;
        return;
    }
#define TK_PQ_SYM(name)                                                                     \
    if (load_rc == TASKER_OK && !(*(void **)&tk_pq.name = dlsym(h, #name))) {               \
        snprintf(load_error, sizeof load_error, "libpq.so.5 has no %s (libpq too old?)",   \
                 #name);                                                                    \
        load_rc = TASKER_ENOTSUP;                                                           \
    }
    TK_PQ_FUNCTIONS(TK_PQ_SYM)
#undef TK_PQ_SYM
    /* The handle stays open for the life of the process: libpq keeps global
     * state (SSL, threads) that must not be unloaded under live connections. */
}

int tk_pq_load(void)
{
    pthread_once(&once, load);
    if (load_rc != TASKER_OK)
        return tk_err(load_rc, TASKER_CATEGORY_DATABASE, json_pack("{s:s}", "library", "libpq.so.5"),
                      "store 'postgres': %s; install libpq5", load_error);
    return TASKER_OK;
}
