/*
 * http_client.h - a tiny blocking HTTP/1.0 client for the endpoint tests.
 *
 * HTTP/1.0 without keep-alive: the server closes the connection after one
 * response, so the whole response is everything read until end of file.
 */
#ifndef TASKER_TEST_HTTP_CLIENT_H
#define TASKER_TEST_HTTP_CLIENT_H

#include <stddef.h>

typedef struct http_reply {
    int status;      /* the status code from the status line */
    char *head;      /* status line and headers, NUL-terminated */
    char *body;      /* the body, NUL-terminated (it may itself hold NULs) */
    size_t body_len;
} http_reply;

/*
 * Sends `request` (a complete request, e.g. "GET / HTTP/1.0\r\n\r\n") to
 * host:port over TCP and reads the response until the server closes the
 * connection (at most 10 s between reads).  Returns 0 with `out` filled, or -1
 * with a message in `err` when the connection fails or the response has no
 * valid status line / header block, or its Content-Length does not match.
 */
int http_raw(http_reply *out, const char *host, int port, const char *request, char *err,
             size_t err_size);

/* "METHOD PATH HTTP/1.0" with a Host header, through http_raw to 127.0.0.1. */
int http_request(http_reply *out, int port, const char *method, const char *path, char *err,
                 size_t err_size);

/* The value of header `name` (case-insensitive) copied into `buf`, or NULL. */
const char *http_header(const http_reply *r, const char *name, char *buf, size_t buf_size);

void http_reply_free(http_reply *r);

/* A TCP socket connected to 127.0.0.1:port, or -1. */
int http_connect(int port);

#endif
