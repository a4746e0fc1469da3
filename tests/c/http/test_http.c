/*
 * The HTTP endpoint (tasker_http_start / _port / _stop), exercised over real
 * sockets with a small HTTP/1.0 client: every route's status code, content
 * type and body, the Prometheus exposition format of /metrics, HTML escaping
 * on the status page, the method and path errors, argument checking, binding
 * to the given address only, a port already in use, and stopping with
 * clients still connected.
 */
#define _GNU_SOURCE
#include "th.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_client.h"
#include "prom_check.h"

#define CT_PROMETHEUS "text/plain; version=0.0.4; charset=utf-8"

/* Names that are markup: the page must show them as text. */
#define EVIL_NS "ns<script><b>&\"'x"
#define EVIL_NS_JSON "ns<script><b>&\\\"'x"
#define EVIL_NS_HTML "ns&lt;script&gt;&lt;b&gt;&amp;&quot;&#39;x"
#define EVIL_STEP_JSON "<script>alert(\\\"x\\\")</script>"
#define EVIL_STEP_HTML "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
#define EVIL_MESSAGE "<img src=x onerror=alert(1)> & \"quoted\""
#define EVIL_MESSAGE_HTML "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quoted&quot;"

typedef struct fixture {
    tasker_coordinator *coord;
    tasker_http *http;
    int port;
} fixture;

/* Fails every attempt for good, with a message that is markup. */
static int boom_handler(tasker_step *step, void *ud)
{
    (void)ud;
    tasker_failure f = TASKER_FAILURE_INIT;
    f.error_class = "DemoError";
    f.message = EVIL_MESSAGE;
    f.retryable = 0;
    int rc = tasker_step_fail(step, &f);
    if (rc != TASKER_OK)
        th_problem("tasker_step_fail = %d", rc);
    return TASKER_OK;
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    fx->coord = th_open(NULL);
    th_handler(fx->coord, "noop", th_handler_noop, NULL);
    th_handler(fx->coord, "boom", boom_handler, NULL);
    th_register(fx->coord, "{\"namespace\":\"shop\",\"name\":\"ping\",\"steps\":["
                           "{\"name\":\"ping\",\"handler\":\"noop\"}]}");
    th_register(fx->coord, "{\"namespace\":\"" EVIL_NS_JSON "\",\"name\":\"t\",\"steps\":["
                           "{\"name\":\"" EVIL_STEP_JSON "\",\"handler\":\"boom\","
                           "\"retry\":{\"max_attempts\":1}}]}");
    th_ok(tasker_coordinator_start(fx->coord, 2));
    th_ok(tasker_http_start(&fx->http, fx->coord, NULL, 0));
    assert_non_null(fx->http);
    fx->port = tasker_http_port(fx->http);
    assert_true(fx->port > 0 && fx->port <= 65535);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    tasker_http_stop(fx->http);
    th_ok(tasker_coordinator_close(fx->coord));
    free(fx);
    return 0;
}

/* Two ping tasks that complete and one evil task that fails for good. */
static void run_tasks(fixture *fx)
{
    char uuid[TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 2; i++) {
        th_create(uuid, fx->coord, "shop", "ping", NULL);
        assert_int_equal(th_wait_final(fx->coord, uuid), TASKER_TASK_COMPLETE);
    }
    th_create(uuid, fx->coord, EVIL_NS, "t", NULL);
    assert_int_equal(th_wait_final(fx->coord, uuid), TASKER_TASK_ERROR);
    th_assert_no_problems();
}

/* GETs `path` and checks the status code and the Content-Type. */
#define get_ok(r, fx, path, code, type) _get(__FILE__, __LINE__, (r), (fx)->port, "GET", (path), (code), (type))
static void _get(const char *file, int line, http_reply *r, int port, const char *method,
                 const char *path, int code, const char *type)
{
    char err[256];
    if (http_request(r, port, method, path, err, sizeof err) != 0) {
        print_error("%s:%d: %s %s: %s\n", file, line, method, path, err);
        _fail(file, line);
    }
    if (r->status != code) {
        print_error("%s:%d: %s %s: status %d, expected %d; body: %.300s\n", file, line, method,
                    path, r->status, code, r->body);
        _fail(file, line);
    }
    char ct[128];
    if (type && (!http_header(r, "Content-Type", ct, sizeof ct) || strcmp(ct, type) != 0)) {
        print_error("%s:%d: %s %s: Content-Type '%s', expected '%s'\n", file, line, method, path,
                    http_header(r, "Content-Type", ct, sizeof ct) ? ct : "(none)", type);
        _fail(file, line);
    }
}

/* The text of the first element starting with `start` up to `end_tag`
 * (caller frees), or NULL. */
static char *slice(const char *text, const char *start, const char *end_tag)
{
    const char *a = strstr(text, start);
    if (!a)
        return NULL;
    const char *b = strstr(a, end_tag);
    if (!b)
        return NULL;
    return strndup(a, (size_t)(b - a) + strlen(end_tag));
}

/* ---- routes ----------------------------------------------------------------- */

static void test_live(void **state)
{
    fixture *fx = *state;
    http_reply r;
    get_ok(&r, fx, "/health/live", 200, "application/json");
    assert_string_equal(r.body, "{\"status\":\"live\"}");
    char v[64];
    assert_non_null(http_header(&r, "Cache-Control", v, sizeof v));
    assert_string_equal(v, "no-store");
    http_reply_free(&r);
    /* The query string is not part of the path. */
    get_ok(&r, fx, "/health/live?probe=kubelet", 200, "application/json");
    http_reply_free(&r);
}

static void test_ready(void **state)
{
    fixture *fx = *state;
    http_reply r;
    get_ok(&r, fx, "/health/ready", 200, "application/json");
    json_t *j = json_loads(r.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
    assert_true(json_is_true(json_object_get(json_object_get(j, "store"), "reachable")));
    json_decref(j);
    http_reply_free(&r);

    /* An open circuit degrades the service but it is still ready: work
     * outside that circuit goes on. */
    th_ok(tasker_circuit_force(fx->coord, "handler:noop", TASKER_CIRCUIT_FORCE_OPEN));
    get_ok(&r, fx, "/health/ready", 200, "application/json");
    j = json_loads(r.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "degraded");
    json_decref(j);
    http_reply_free(&r);
    th_ok(tasker_circuit_force(fx->coord, "handler:noop", TASKER_CIRCUIT_AUTO));
}

static void test_metrics(void **state)
{
    fixture *fx = *state;
    run_tasks(fx);
    http_reply r;
    get_ok(&r, fx, "/metrics", 200, CT_PROMETHEUS);
    char err[256];
    size_t samples = 0;
    if (prom_check(r.body, &samples, err, sizeof err) != 0) {
        print_error("/metrics is not valid exposition format: %s\n----\n%s\n----\n", err, r.body);
        fail();
    }
    assert_true(samples > 10);
    /* The numbers are the coordinator's, not a canned page. */
    assert_true(prom_value(r.body, "tasker_tasks_total{namespace=\"shop\",outcome=\"completed\"}") == 2.0);
    assert_true(prom_value(r.body, "tasker_dead_letters_total{handler=\"boom\"}") == 1.0);
    /* A namespace holding a quote is escaped inside the label value. */
    assert_non_null(strstr(r.body, "namespace=\"ns<script><b>&\\\"'x\""));
    http_reply_free(&r);
}

/* The checker must be able to fail, or test_metrics proves nothing. */
static void test_prom_checker_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "# TYPE a counter\na 1",                             /* no final newline */
        "# TYPE a counter\na one\n",                         /* value not a float */
        "# TYPE a counter\na{x=\"1\"}\n",                    /* no value */
        "# TYPE a counter\na{x=1} 1\n",                      /* unquoted label value */
        "# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n",          /* label twice */
        "# TYPE a counter\na{x=\"\\q\"} 1\n",                /* bad escape */
        "# TYPE a countr\na 1\n",                            /* unknown type */
        "# TYPE a counter\n# TYPE a counter\na 1\n",         /* TYPE twice */
        "a 1\n",                                             /* no TYPE */
        "# TYPE a counter\na 1\n# TYPE b gauge\nb 1\na 2\n", /* family split */
        "# TYPE 1a counter\n",                               /* bad name */
        "# TYPE a counter\na 1 12x\n",                       /* bad timestamp */
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
        "h_sum 1\nh_count 1\n", /* bucket counts decrease */
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", /* no +Inf */
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", /* count != +Inf */
        "# TYPE h histogram\nh_bucket 1\n",                                /* no le */
    };
    char err[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (prom_check(bad[i], NULL, err, sizeof err) == 0) {
            print_error("checker accepted bad input %zu:\n%s\n", i, bad[i]);
            fail();
        }
    }
    const char *good = "# HELP a An \\\\ example\\n.\n# TYPE a counter\n"
                       "a{x=\"q\\\"\\n\\\\\",y=\"\"} 1.5e3 1700000000000\n\n"
                       "# some comment\n# TYPE g gauge\ng -Inf\ng NaN\n"
                       "# TYPE h histogram\nh_bucket{k=\"1\",le=\"0.5\"} 1\n"
                       "h_bucket{k=\"1\",le=\"+Inf\"} 3\nh_sum{k=\"1\"} 2.5\nh_count{k=\"1\"} 3\n";
    size_t n = 0;
    if (prom_check(good, &n, err, sizeof err) != 0) {
        print_error("checker rejected good input: %s\n", err);
        fail();
    }
    assert_int_equal(n, 7);
}

static void test_status_json(void **state)
{
    fixture *fx = *state;
    run_tasks(fx);
    http_reply r;
    get_ok(&r, fx, "/status.json", 200, "application/json");
    json_error_t jerr;
    json_t *j = json_loads(r.body, 0, &jerr);
    if (!j) {
        print_error("/status.json is not JSON: %s\n", jerr.text);
        fail();
    }
    json_t *shop = json_object_get(json_object_get(j, "tasks"), "shop");
    assert_int_equal(json_integer_value(json_object_get(shop, "complete")), 2);
    json_t *evil = json_object_get(json_object_get(j, "tasks"), EVIL_NS);
    assert_int_equal(json_integer_value(json_object_get(evil, "error")), 1);
    json_t *dead = json_object_get(j, "dead_letters");
    assert_int_equal(json_array_size(dead), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(dead, 0), "message")),
                        EVIL_MESSAGE);
    json_decref(j);
    http_reply_free(&r);
}

static void test_page(void **state)
{
    fixture *fx = *state;
    run_tasks(fx);
    th_ok(tasker_circuit_force(fx->coord, "handler:boom", TASKER_CIRCUIT_FORCE_OPEN));
    http_reply r;
    get_ok(&r, fx, "/", 200, "text/html; charset=utf-8");
    const char *html = r.body;
    assert_non_null(strstr(html, "<!DOCTYPE html>"));
    assert_non_null(strstr(html, "<meta http-equiv=\"refresh\" content=\"5\">"));
    assert_non_null(strstr(html, "<section id=\"tasks\">"));
    assert_non_null(strstr(html, "<section id=\"recent-failures\">"));
    assert_non_null(strstr(html, "<section id=\"dead-letters\">"));
    assert_non_null(strstr(html, "<section id=\"circuits\">"));

    /* Markup from names and messages only ever appears escaped. */
    assert_null(strcasestr(html, "<script"));
    assert_null(strcasestr(html, "<img"));
    assert_null(strstr(html, "<b>"));
    assert_non_null(strstr(html, EVIL_STEP_HTML));
    assert_non_null(strstr(html, EVIL_NS_HTML));
    assert_non_null(strstr(html, EVIL_MESSAGE_HTML));

    /* Counts per namespace and state, from the coordinator. */
    char *row = slice(html, "<tr data-namespace=\"shop\">", "</tr>");
    assert_non_null(row);
    assert_non_null(strstr(row, "<td data-state=\"complete\">2</td>"));
    assert_non_null(strstr(row, "<td data-state=\"error\" class=\"zero\">0</td>"));
    assert_non_null(strstr(row, "<td data-state=\"total\">2</td>"));
    free(row);
    row = slice(html, "<tr data-namespace=\"" EVIL_NS_HTML "\">", "</tr>");
    assert_non_null(row);
    assert_non_null(strstr(row, "<td data-state=\"error\">1</td>"));
    free(row);

    /* The dead letter and the failure, with class and message. */
    char *dead = slice(html, "<section id=\"dead-letters\">", "</section>");
    assert_non_null(dead);
    assert_non_null(strstr(dead, "<span class=\"count\">1</span>"));
    assert_non_null(strstr(dead, "<td class=\"class\">DemoError</td>"));
    assert_non_null(strstr(dead, "<td class=\"message\">" EVIL_MESSAGE_HTML "</td>"));
    free(dead);
    char *failures = slice(html, "<section id=\"recent-failures\">", "</section>");
    assert_non_null(failures);
    assert_non_null(strstr(failures, "<td class=\"step\">" EVIL_STEP_HTML "</td>"));
    free(failures);

    /* The forced-open circuit. */
    char *circuit = slice(html, "<tr data-circuit=\"handler:boom\"", "</tr>");
    assert_non_null(circuit);
    assert_non_null(strstr(circuit, "class=\"circuit-open\""));
    assert_non_null(strstr(circuit, "<td data-field=\"state\">open</td>"));
    free(circuit);
    http_reply_free(&r);
}

static void test_not_found(void **state)
{
    fixture *fx = *state;
    static const char *const paths[] = {"/nope", "/metrics/", "/health", "/health/live/x",
                                        "/status.json.bak", "//"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        http_reply r;
        get_ok(&r, fx, paths[i], 404, "text/plain; charset=utf-8");
        http_reply_free(&r);
    }
}

static void test_method_not_allowed(void **state)
{
    fixture *fx = *state;
    static const char *const methods[] = {"POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        http_reply r;
        _get(__FILE__, __LINE__, &r, fx->port, methods[i], "/metrics", 405, NULL);
        char allow[32];
        assert_non_null(http_header(&r, "Allow", allow, sizeof allow));
        assert_string_equal(allow, "GET");
        http_reply_free(&r);
    }
    /* A request with a body is refused too, and the body is not read as a
     * second request. */
    http_reply r;
    char err[256];
    const char *post = "POST /status.json HTTP/1.0\r\nContent-Type: application/json\r\n"
                       "Content-Length: 27\r\n\r\nGET /metrics HTTP/1.0\r\n\r\n";
    assert_int_equal(http_raw(&r, "127.0.0.1", fx->port, post, err, sizeof err), 0);
    assert_int_equal(r.status, 405);
    assert_null(strstr(r.body, "tasker_"));
    http_reply_free(&r);
}

/* Two GETs on one HTTP/1.1 connection, the first with a body that must be
 * skipped: both are answered on the same connection (keep-alive for
 * scrapers and probes). */
static void test_keep_alive(void **state)
{
    fixture *fx = *state;
    int fd = http_connect(fx->port);
    assert_true(fd >= 0);
    const char *reqs = "GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                       "GET /status.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_int_equal(send(fd, reqs, strlen(reqs), MSG_NOSIGNAL), (ssize_t)strlen(reqs));
    char buf[65536];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && (r = recv(fd, buf + len, sizeof buf - 1 - len, 0)) > 0)
        len += (size_t)r;
    close(fd);
    buf[len] = '\0';
    size_t n = 0;
    for (const char *p = buf; (p = strstr(p, "HTTP/1.1 200 OK\r\n")); p++)
        n++;
    if (n != 2) {
        print_error("expected 2 responses on one connection, got %zu:\n%.600s\n", n, buf);
        fail();
    }
    assert_non_null(strstr(buf, "{\"status\":\"live\"}"));
    assert_non_null(strstr(buf, "\"dead_letters\""));
}

/* Several clients at once while workers run tasks. */
typedef struct hammer {
    int port;
    int failures;
    pthread_t thread;
} hammer;

static void *hammer_main(void *arg)
{
    hammer *h = arg;
    static const char *const paths[] = {"/metrics", "/status.json", "/", "/health/ready"};
    for (int i = 0; i < 12; i++) {
        http_reply r;
        char err[256];
        if (http_request(&r, h->port, "GET", paths[i % 4], err, sizeof err) != 0 ||
            r.status != 200 || r.body_len == 0)
            h->failures++;
        http_reply_free(&r);
    }
    return NULL;
}

static void test_concurrent_clients(void **state)
{
    fixture *fx = *state;
    hammer hs[4];
    for (int i = 0; i < 4; i++) {
        hs[i].port = fx->port;
        hs[i].failures = 0;
        assert_int_equal(pthread_create(&hs[i].thread, NULL, hammer_main, &hs[i]), 0);
    }
    run_tasks(fx);
    int failures = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(hs[i].thread, NULL);
        failures += hs[i].failures;
    }
    assert_int_equal(failures, 0);
}

/* ---- arguments, binding, lifecycle --------------------------------------------- */

static void test_bad_args(void **state)
{
    fixture *fx = *state;
    tasker_http *h = (tasker_http *)0x1;
    assert_int_equal(tasker_http_start(NULL, fx->coord, NULL, 0), TASKER_EINVAL);
    assert_int_equal(tasker_http_start(&h, NULL, NULL, 0), TASKER_EINVAL);
    assert_null(h);
    static const int ports[] = {-1, 65536, 100000, -65535};
    for (size_t i = 0; i < sizeof ports / sizeof ports[0]; i++) {
        h = (tasker_http *)0x1;
        assert_int_equal(tasker_http_start(&h, fx->coord, NULL, ports[i]), TASKER_EINVAL);
        assert_null(h);
        const tasker_error *e = tasker_error_last();
        assert_int_equal(e->code, TASKER_EINVAL);
        assert_int_equal(e->category, TASKER_CATEGORY_ARGUMENT);
        assert_non_null(strstr(e->message, "65535"));
    }
    static const char *const addrs[] = {"", "localhost", "999.1.1.1", "127.0.0.1:80", "::g",
                                        "[127.0.0.1]", "1.2.3", "example.com"};
    for (size_t i = 0; i < sizeof addrs / sizeof addrs[0]; i++) {
        h = (tasker_http *)0x1;
        assert_int_equal(tasker_http_start(&h, fx->coord, addrs[i], 0), TASKER_EINVAL);
        assert_null(h);
        json_t *ctx = th_error_context();
        assert_string_equal(json_string_value(json_object_get(ctx, "bind_address")), addrs[i]);
        json_decref(ctx);
    }
    assert_int_equal(tasker_http_port(NULL), 0);
    tasker_http_stop(NULL);
}

static void test_port_in_use(void **state)
{
    fixture *fx = *state;
    /* The fixture's endpoint holds fx->port. */
    tasker_http *h = (tasker_http *)0x1;
    assert_int_equal(tasker_http_start(&h, fx->coord, "127.0.0.1", fx->port), TASKER_EIO);
    assert_null(h);
    const tasker_error *e = tasker_error_last();
    assert_int_equal(e->code, TASKER_EIO);
    assert_int_equal(e->category, TASKER_CATEGORY_NETWORK);
    char port[16];
    snprintf(port, sizeof port, ":%d", fx->port);
    if (!strstr(e->message, port) || !strcasestr(e->message, "in use")) {
        print_error("message does not name the port or the cause: %s\n", e->message);
        fail();
    }
    json_t *ctx = th_error_context();
    assert_int_equal(json_integer_value(json_object_get(ctx, "port")), fx->port);
    json_decref(ctx);

    /* The same with a plain listening socket holding the port. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(fd, 1), 0);
    socklen_t len = sizeof sin;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    int taken = ntohs(sin.sin_port);
    assert_int_equal(tasker_http_start(&h, fx->coord, NULL, taken), TASKER_EIO);
    assert_null(h);
    close(fd);
    /* Once the port is free again, the endpoint gets exactly that port. */
    th_ok(tasker_http_start(&h, fx->coord, NULL, taken));
    assert_int_equal(tasker_http_port(h), taken);
    http_reply r;
    char err[256];
    assert_int_equal(http_request(&r, taken, "GET", "/health/live", err, sizeof err), 0);
    assert_int_equal(r.status, 200);
    http_reply_free(&r);
    tasker_http_stop(h);
}

static void test_address_not_local(void **state)
{
    fixture *fx = *state;
    /* 192.0.2.0/24 is TEST-NET-1: never an address of this machine. */
    tasker_http *h = (tasker_http *)0x1;
    assert_int_equal(tasker_http_start(&h, fx->coord, "192.0.2.1", 0), TASKER_EIO);
    assert_null(h);
    assert_non_null(strstr(tasker_error_last()->message, "192.0.2.1"));
}

static void test_binds_given_address_only(void **state)
{
    fixture *fx = *state;
    /* The endpoint listens on 127.0.0.1:P only; were it bound to every
     * address, 127.0.0.2:P (also loopback on Linux) would be taken. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx->port)};
    inet_pton(AF_INET, "127.0.0.2", &sin.sin_addr);
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0) {
        print_error("bind 127.0.0.2:%d: %s (is the endpoint bound to 0.0.0.0?)\n", fx->port,
                    strerror(errno));
        close(fd);
        fail();
    }
    close(fd);
    /* ... and a client on 127.0.0.2 is not served. */
    http_reply r;
    char err[256];
    assert_int_not_equal(http_raw(&r, "127.0.0.2", fx->port, "GET / HTTP/1.0\r\n\r\n", err,
                                  sizeof err),
                         0);
}

static void test_ipv6_loopback(void **state)
{
    fixture *fx = *state;
    tasker_http *h = NULL;
    int rc = tasker_http_start(&h, fx->coord, "::1", 0);
    if (rc == TASKER_EIO) {
        print_message("IPv6 loopback unavailable here: %s\n", tasker_error_last()->message);
        skip();
    }
    th_ok(rc);
    http_reply r;
    char err[256];
    assert_int_equal(http_raw(&r, "::1", tasker_http_port(h), "GET /health/live HTTP/1.0\r\n\r\n",
                              err, sizeof err),
                     0);
    assert_int_equal(r.status, 200);
    http_reply_free(&r);
    tasker_http_stop(h);
    /* The bracketed form is accepted too. */
    th_ok(tasker_http_start(&h, fx->coord, "[::1]", 0));
    tasker_http_stop(h);
}

static void test_stop_with_clients_connected(void **state)
{
    fixture *fx = *state;
    tasker_http *h = NULL;
    th_ok(tasker_http_start(&h, fx->coord, NULL, 0));
    int port = tasker_http_port(h);
    /* One client idle, one halfway through a request. */
    int idle = http_connect(port);
    int half = http_connect(port);
    assert_true(idle >= 0 && half >= 0);
    const char *partial = "GET /metrics HTTP/1.0\r\nHost: x\r\n";
    assert_int_equal(send(half, partial, strlen(partial), MSG_NOSIGNAL), (ssize_t)strlen(partial));
    th_sleep_ms(50);
    double t0 = th_now_ms();
    tasker_http_stop(h);
    assert_true(th_now_ms() - t0 < 5000.0);
    /* The server side is gone: both see end of file or a reset. */
    char c;
    assert_true(recv(idle, &c, 1, 0) <= 0);
    assert_true(recv(half, &c, 1, 0) <= 0);
    close(idle);
    close(half);
    /* The port is free again. */
    int fd = http_connect(port);
    if (fd >= 0)
        close(fd);
    assert_true(fd < 0);
}

static void test_restart_cycles(void **state)
{
    fixture *fx = *state;
    for (int i = 0; i < 5; i++) {
        tasker_http *h = NULL;
        th_ok(tasker_http_start(&h, fx->coord, NULL, 0));
        http_reply r;
        char err[256];
        assert_int_equal(http_request(&r, tasker_http_port(h), "GET", "/metrics", err, sizeof err),
                         0);
        assert_int_equal(r.status, 200);
        http_reply_free(&r);
        tasker_http_stop(h);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_live, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ready, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
        cmocka_unit_test(test_prom_checker_rejects),
        cmocka_unit_test_setup_teardown(test_status_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_page, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_method_not_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_port_in_use, setup, teardown),
        cmocka_unit_test_setup_teardown(test_address_not_local, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binds_given_address_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6_loopback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_clients_connected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_cycles, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
