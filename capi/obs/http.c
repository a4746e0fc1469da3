/* The HTTP endpoint: health probes, Prometheus metrics, the status report and
 * the status page, served by libmicrohttpd on a thread of its own.
 *
 * libmicrohttpd runs one internal polling thread (epoll on Linux) that does
 * all socket I/O without blocking, so a slow client cannot hold up the
 * others; each request is answered from the coordinator's thread-safe report
 * calls, which hold the coordinator's lock only while they copy numbers. */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "core/alloc.h"
#include "obs/mhd_dl.h"
#include "core/error.h"
#include "obs/status_page.h"
#include "tasker.h"

/* A client that sends nothing for this long is disconnected, so idle or
 * half-open connections do not pile up. */
#define HTTP_IDLE_TIMEOUT_S 10u
/* Connections served at once; more are refused until some close.  Probes and
 * scrapes need a handful; the cap bounds the memory a flood can take. */
#define HTTP_MAX_CONNECTIONS 64u

#define CT_JSON "application/json"
#define CT_TEXT "text/plain; charset=utf-8"
#define CT_HTML "text/html; charset=utf-8"
#define CT_PROMETHEUS "text/plain; version=0.0.4; charset=utf-8"

struct tasker_http {
    struct MHD_Daemon *daemon;
    tasker_coordinator *coord;
    int port;
    /* libmicrohttpd reports why it could not start only through its logger;
     * while tasker_http_start runs, the first message is kept here for the
     * caller's error.  Afterwards messages are dropped: a library does not
     * write to stderr on its own. */
    pthread_mutex_t log_lock;
    int log_capture;
    char log_first[256];
};

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct tasker_http *h = cls;
    pthread_mutex_lock(&h->log_lock);
    if (h->log_capture && h->log_first[0] == '\0') {
        vsnprintf(h->log_first, sizeof h->log_first, fmt, ap);
        size_t n = strlen(h->log_first);
        while (n > 0 && (h->log_first[n - 1] == '\n' || h->log_first[n - 1] == '\r'))
            h->log_first[--n] = '\0';
    }
    pthread_mutex_unlock(&h->log_lock);
}

/* Queues a response whose body `body` (len bytes) is released with
 * `release` (NULL: the body is static).  The headers every answer carries:
 * nothing here may be cached, sniffed as another type, framed, or run
 * scripts. */
static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, const char *type,
                               char *body, size_t len, void (*release)(void *))
{
    struct MHD_Response *r =
        release ? MHD_create_response_from_buffer_with_free_callback(len, body, release)
                : MHD_create_response_from_buffer(len, body, MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (release)
            release(body);
        return MHD_NO; /* out of memory: dropping the connection is all that is left */
    }
    enum MHD_Result ok = MHD_YES;
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type) != MHD_YES ||
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") != MHD_YES ||
        MHD_add_response_header(r, "X-Content-Type-Options", "nosniff") != MHD_YES ||
        MHD_add_response_header(r, "Content-Security-Policy",
                                "default-src 'none'; style-src 'unsafe-inline'; "
                                "frame-ancestors 'none'") != MHD_YES)
        ok = MHD_NO;
    if (ok == MHD_YES && status == MHD_HTTP_METHOD_NOT_ALLOWED)
        ok = MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET");
    if (ok == MHD_YES)
        ok = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result respond_static(struct MHD_Connection *conn, unsigned status,
                                      const char *type, const char *text)
{
    /* MHD_RESPMEM_PERSISTENT never writes to the buffer. */
    return respond(conn, status, type, (char *)text, strlen(text), NULL);
}

static void release_tasker(void *p)
{
    tasker_free(p);
}

static void release_tk(void *p)
{
    tk_free(p);
}

/* A report call failed: answers `status` with the library's error, as JSON
 * for the JSON routes and as text for the others. */
static enum MHD_Result respond_error(struct MHD_Connection *conn, unsigned status, int json,
                                    const char *what)
{
    const tasker_error *e = tasker_error_last();
    char *body = NULL;
    if (json) {
        json_t *o = json_pack("{s:s, s:{s:s, s:i, s:s}}", "status", "down", "error", "what",
                              what, "code", e->code, "message", e->message);
        body = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (body) {
            /* json_dumps allocates with jansson's allocator. */
            json_free_t jfree;
            json_get_alloc_funcs(NULL, &jfree);
            size_t len = strlen(body);
            char *copy = tk_malloc(len + 1);
            if (copy)
                memcpy(copy, body, len + 1);
            jfree(body);
            body = copy;
        }
    } else {
        size_t len = strlen(what) + strlen(e->message) + 16;
        body = tk_malloc(len);
        if (body)
            snprintf(body, len, "%s failed: %s\n", what, e->message);
    }
    if (!body)
        return respond_static(conn, status, CT_TEXT, "internal error\n");
    return respond(conn, status, json ? CT_JSON : CT_TEXT, body, strlen(body), release_tk);
}

/* Ready means: the health report could be made, its status is "ok" or
 * "degraded" (an open circuit limits work but does not stop it), and the
 * store is reachable.  The report itself is the body either way, so a probe
 * failure can be read off the response. */
static enum MHD_Result serve_ready(struct MHD_Connection *conn, tasker_coordinator *coord)
{
    char *report = NULL;
    if (tasker_health_json(&report, coord) != TASKER_OK)
        return respond_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, 1, "tasker_health_json");
    json_t *root = json_loads(report, 0, NULL);
    const char *status = json_string_value(json_object_get(root, "status"));
    int reachable = json_is_true(json_object_get(json_object_get(root, "store"), "reachable"));
    int ready = status && (!strcmp(status, "ok") || !strcmp(status, "degraded")) && reachable;
    json_decref(root);
    return respond(conn, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, CT_JSON, report,
                   strlen(report), release_tasker);
}

static enum MHD_Result serve_page(struct MHD_Connection *conn, tasker_coordinator *coord)
{
    char *status = NULL, *html = NULL;
    size_t len = 0;
    if (tasker_status_json(&status, coord) != TASKER_OK)
        return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, 0, "tasker_status_json");
    int rc = tk_status_page_render(&html, &len, status);
    tasker_free(status);
    if (rc != TASKER_OK)
        return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, 0, "status page");
    return respond(conn, MHD_HTTP_OK, CT_HTML, html, len, release_tk);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    static char seen_headers; /* marks a request whose headers were seen */
    struct tasker_http *h = cls;
    (void)version;
    (void)upload_data;
    /* Other methods are refused at once, before any body is read; answering
     * that early makes libmicrohttpd close the connection afterwards, which
     * is what a refused request deserves. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
        return respond_static(conn, MHD_HTTP_METHOD_NOT_ALLOWED, CT_TEXT,
                              "method not allowed: this endpoint is read-only (GET)\n");
    /* A GET is answered once the whole request has been read (a body, which
     * GET should not have, is dropped), so the connection can be kept alive
     * for the next scrape or probe. */
    if (*con_cls == NULL) {
        *con_cls = &seen_headers;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!strcmp(url, "/health/live"))
        return respond_static(conn, MHD_HTTP_OK, CT_JSON, "{\"status\":\"live\"}");
    if (!strcmp(url, "/health/ready"))
        return serve_ready(conn, h->coord);
    if (!strcmp(url, "/metrics")) {
        char *text = NULL;
        if (tasker_metrics_text(&text, h->coord) != TASKER_OK)
            return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, 0, "tasker_metrics_text");
        return respond(conn, MHD_HTTP_OK, CT_PROMETHEUS, text, strlen(text), release_tasker);
    }
    if (!strcmp(url, "/status.json")) {
        char *json = NULL;
        if (tasker_status_json(&json, h->coord) != TASKER_OK)
            return respond_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, 1, "tasker_status_json");
        return respond(conn, MHD_HTTP_OK, CT_JSON, json, strlen(json), release_tasker);
    }
    if (!strcmp(url, "/"))
        return serve_page(conn, h->coord);
    return respond_static(conn, MHD_HTTP_NOT_FOUND, CT_TEXT,
                          "not found; try /, /status.json, /metrics, /health/live or "
                          "/health/ready\n");
}

/* Parses a numeric IPv4 or IPv6 address ("::1" or "[::1]") with the port
 * into `ss`.  Host names are refused: resolving them could block and could
 * bind somewhere the caller did not expect. */
static int parse_address(struct sockaddr_storage *ss, int *is_v6, const char *addr, int port)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, addr, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *is_v6 = 0;
        return 0;
    }
    char buf[INET6_ADDRSTRLEN + 2];
    size_t n = strlen(addr);
    if (n >= 2 && addr[0] == '[' && addr[n - 1] == ']') {
        addr++;
        n -= 2;
    }
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, addr, n);
    buf[n] = '\0';
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, buf, &v6->sin6_addr) != 1)
        return -1;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    *is_v6 = 1;
    return 0;
}

int tasker_http_start(tasker_http **out, tasker_coordinator *coord, const char *bind_address,
                      int port)
{
    if (out)
        *out = NULL;
    if (!out || !coord)
        return tk_einval("tasker_http_start: out and coordinator must not be NULL");
    if (port < 0 || port > 65535)
        return tk_err(TASKER_EINVAL, TASKER_CATEGORY_ARGUMENT, json_pack("{s:i}", "port", port),
                      "tasker_http_start: port %d is outside 0..65535 (0 picks a free port)",
                      port);
    const char *addr = bind_address ? bind_address : "127.0.0.1";
    struct sockaddr_storage ss;
    int is_v6 = 0;
    if (parse_address(&ss, &is_v6, addr, port) != 0)
        return tk_err(TASKER_EINVAL, TASKER_CATEGORY_ARGUMENT,
                      json_pack("{s:s}", "bind_address", addr),
                      "tasker_http_start: bind address '%s' is not a numeric IPv4 or IPv6 "
                      "address",
                      addr);
    int rc = tk_mhd_load();
    if (rc)
        return rc;

    struct tasker_http *h = tk_calloc(1, sizeof *h);
    if (!h)
        return tk_enomem();
    h->coord = coord;
    pthread_mutex_init(&h->log_lock, NULL);
    h->log_capture = 1;

    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (is_v6)
        flags |= MHD_USE_IPv6;
    /* The logger must be the first option, or libmicrohttpd complains
     * through its default logger (stderr) about the ones before it. */
    h->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, h,
                                 MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                                 MHD_OPTION_CONNECTION_TIMEOUT, HTTP_IDLE_TIMEOUT_S,
                                 MHD_OPTION_CONNECTION_LIMIT, HTTP_MAX_CONNECTIONS, MHD_OPTION_END);
    pthread_mutex_lock(&h->log_lock);
    h->log_capture = 0;
    pthread_mutex_unlock(&h->log_lock);
    if (!h->daemon) {
        int rc = tk_err(TASKER_EIO, TASKER_CATEGORY_NETWORK,
                        json_pack("{s:s, s:i, s:s}", "bind_address", addr, "port", port,
                                  "detail", h->log_first),
                        "tasker_http_start: cannot listen on %s%s%s:%d: %s",
                        is_v6 && addr[0] != '[' ? "[" : "", addr,
                        is_v6 && addr[0] != '[' ? "]" : "", port,
                        h->log_first[0] ? h->log_first : "libmicrohttpd could not start");
        pthread_mutex_destroy(&h->log_lock);
        tk_free(h);
        return rc;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info && info->port ? (int)info->port : port;
    *out = h;
    return TASKER_OK;
}

int tasker_http_port(const tasker_http *http)
{
    return http ? http->port : 0;
}

void tasker_http_stop(tasker_http *http)
{
    if (!http)
        return;
    /* Joins the server thread; no request runs once this returns. */
    MHD_stop_daemon(http->daemon);
    pthread_mutex_destroy(&http->log_lock);
    tk_free(http);
}
