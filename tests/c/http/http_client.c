#define _GNU_SOURCE
#include "http_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int connect_to(const char *host, int port, char *err, size_t err_size)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((unsigned short)port);
        len = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((unsigned short)port);
        len = sizeof *v6;
    } else {
        snprintf(err, err_size, "bad host %s", host);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, err_size, "socket: %s", strerror(errno));
        return -1;
    }
    /* A server that never answers must fail the test, not hang it. */
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
        snprintf(err, err_size, "connect to %s:%d: %s", host, port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int http_connect(int port)
{
    char err[128];
    return connect_to("127.0.0.1", port, err, sizeof err);
}

int http_raw(http_reply *out, const char *host, int port, const char *request, char *err,
             size_t err_size)
{
    memset(out, 0, sizeof *out);
    out->status = -1;
    int fd = connect_to(host, port, err, err_size);
    if (fd < 0)
        return -1;
    size_t n = strlen(request), off = 0;
    while (off < n) {
        ssize_t w = send(fd, request + off, n - off, MSG_NOSIGNAL);
        if (w <= 0) {
            snprintf(err, err_size, "send: %s", strerror(errno));
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            snprintf(err, err_size, "out of memory");
            close(fd);
            return -1;
        }
        if (cap - len < 2048) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                continue;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, err_size, "recv: %s", strerror(errno));
            free(buf);
            close(fd);
            return -1;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';

    char *end = strstr(buf, "\r\n\r\n");
    int code = 0;
    if (!end || sscanf(buf, "HTTP/1.%*1[01] %3d", &code) != 1 || code < 100 || code > 599) {
        snprintf(err, err_size, "malformed response (%zu bytes): %.80s", len, buf);
        free(buf);
        return -1;
    }
    size_t head_len = (size_t)(end - buf) + 2; /* keep the last header's CRLF */
    out->head = malloc(head_len + 1);
    out->body_len = len - (head_len + 2);
    out->body = malloc(out->body_len + 1);
    if (!out->head || !out->body) {
        snprintf(err, err_size, "out of memory");
        free(buf);
        http_reply_free(out);
        return -1;
    }
    memcpy(out->head, buf, head_len);
    out->head[head_len] = '\0';
    memcpy(out->body, end + 4, out->body_len);
    out->body[out->body_len] = '\0';
    out->status = code;
    free(buf);

    /* A response to HEAD announces the length of the body it leaves out. */
    char cl[32];
    if (strncmp(request, "HEAD ", 5) != 0 && http_header(out, "Content-Length", cl, sizeof cl) &&
        strtoull(cl, NULL, 10) != (unsigned long long)out->body_len) {
        snprintf(err, err_size, "Content-Length %s but %zu body bytes", cl, out->body_len);
        http_reply_free(out);
        return -1;
    }
    return 0;
}

int http_request(http_reply *out, int port, const char *method, const char *path, char *err,
                 size_t err_size)
{
    char req[1024];
    snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nUser-Agent: tasker-test\r\n\r\n",
             method, path, port);
    return http_raw(out, "127.0.0.1", port, req, err, err_size);
}

const char *http_header(const http_reply *r, const char *name, char *buf, size_t buf_size)
{
    if (!r->head)
        return NULL;
    size_t nlen = strlen(name);
    /* Skip the status line; each header line ends with CRLF. */
    for (const char *line = strstr(r->head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, name, nlen) == 0 && h[nlen] == ':') {
            const char *v = h + nlen + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t vlen = e ? (size_t)(e - v) : strlen(v);
            while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
                vlen--;
            if (vlen >= buf_size)
                vlen = buf_size - 1;
            memcpy(buf, v, vlen);
            buf[vlen] = '\0';
            return buf;
        }
    }
    return NULL;
}

void http_reply_free(http_reply *r)
{
    free(r->head);
    free(r->body);
    r->head = r->body = NULL;
    r->body_len = 0;
}
