/*
 * libmicrohttpd, loaded with dlopen() when an HTTP endpoint is started.
 *
 * Linked normally, libmicrohttpd maps GnuTLS and its dependencies into every
 * process that uses tasker, endpoint or not (about 3 MiB of RSS).  http.c
 * includes this header instead of <microhttpd.h>; its MHD_* calls then go
 * through a table filled by tk_mhd_load().
 */
#ifndef TASKER_OBS_MHD_DL_H
#define TASKER_OBS_MHD_DL_H

#include <microhttpd.h>

#define TK_MHD_FUNCTIONS(X)                                                                \
    X(MHD_start_daemon) X(MHD_stop_daemon) X(MHD_get_daemon_info) X(MHD_queue_response)    \
    X(MHD_create_response_from_buffer) X(MHD_create_response_from_buffer_with_free_callback) \
    X(MHD_destroy_response) X(MHD_add_response_header)

#define TK_MHD_MEMBER(name) __typeof__(name) *name;
typedef struct tk_mhd_api {
    TK_MHD_FUNCTIONS(TK_MHD_MEMBER)
} tk_mhd_api;
#undef TK_MHD_MEMBER

extern tk_mhd_api tk_mhd;

/* Loads libmicrohttpd once: TASKER_OK, or TASKER_ENOTSUP naming the library. */
int tk_mhd_load(void);

#ifndef TK_MHD_DL_IMPLEMENTATION
#define MHD_start_daemon tk_mhd.MHD_start_daemon
#define MHD_stop_daemon tk_mhd.MHD_stop_daemon
#define MHD_get_daemon_info tk_mhd.MHD_get_daemon_info
#define MHD_queue_response tk_mhd.MHD_queue_response
#define MHD_create_response_from_buffer tk_mhd.MHD_create_response_from_buffer
#define MHD_create_response_from_buffer_with_free_callback \
    tk_mhd.MHD_create_response_from_buffer_with_free_callback
#define MHD_destroy_response tk_mhd.MHD_destroy_response
#define MHD_add_response_header tk_mhd.MHD_add_response_header
#endif

#endif
