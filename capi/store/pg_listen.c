/*
 * Postgres store: wakeups.  A listener thread holds a connection that
 * LISTENs on two channels:
 *   tasker_ready  ''          steps were enqueued: claimers try now
 *                 '<unix ms>' a retry becomes due then: arm a timer
 *   tasker_done   '<uuid>'    a task finished: wake its waiters
 * Notifications are hints.  Claimers also poll (pg->poll_ms) and waiters
 * re-read their task every 2 s, so a notification lost with a connection
 * costs latency, never correctness.  After every reconnection everybody is
 * woken, because notifications sent meanwhile are gone.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "run/engine.h"
#include "store/pg_internal.h"

void tk_pg_poll_arm_locked(tk_pg *pg, int ready, int64_t due_ms)
{
    if (pg->epfd < 0)
        return;
    if (ready && !pg->ev_armed) {
        uint64_t one = 1;
        if (write(pg->evfd, &one, sizeof one) == sizeof one)
            pg->ev_armed = 1;
    }
    if (due_ms > 0 && (pg->tfd_due_ms == 0 || due_ms < pg->tfd_due_ms)) {
        struct itimerspec its = {0};
        its.it_value.tv_sec = due_ms / 1000;
        its.it_value.tv_nsec = (due_ms % 1000) * 1000000;
        if (timerfd_settime(pg->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
            pg->tfd_due_ms = due_ms;
    }
}

void tk_pg_wake_ready_locked(tk_pg *pg)
{
    pg->ready_seq++;
    pthread_cond_broadcast(&pg->claimer_cv);
    tk_pg_poll_arm_locked(pg, 1, 0);
}

void tk_pg_wake_waiters_locked(tk_pg *pg, const char *uuid)
{
    int any = 0;
    for (tk_pgwaiter *w = pg->waiters; w; w = w->next) {
        if (!uuid || !strcmp(w->uuid, uuid)) {
            w->signaled = 1;
            any = 1;
        }
    }
    if (any)
        pthread_cond_broadcast(&pg->waiters_cv);
}

static int listen_on(tk_pg *pg, tk_pgconn *c)
{
    return tk_pg_simple(pg, c, "LISTEN tasker_ready") || tk_pg_simple(pg, c, "LISTEN tasker_done")
               ? -1
               : 0;
}

static void *listener_main(void *arg)
{
    tk_pg *pg = arg;
    tk_pgconn *c = NULL;
    unsigned backoff = 0;
    for (;;) {
        pthread_mutex_lock(&pg->mu);
        int quit = pg->listener_quit;
        pthread_mutex_unlock(&pg->mu);
        if (quit)
            break;
        if (!c) {
            if (tk_pg_connect(pg, &c) != TASKER_OK || listen_on(pg, c) != 0) {
                tk_pg_disconnect(c);
                c = NULL;
                backoff = tk_pg_backoff_sleep(pg, backoff, &pg->listener_quit);
                continue;
            }
            atomic_store(&pg->up_listener, 1);
            if (backoff) {
                /* Reconnected: whatever was notified meanwhile is lost. */
                pthread_mutex_lock(&pg->mu);
                pg->reconnects++;
                tk_pg_wake_ready_locked(pg);
                tk_pg_wake_waiters_locked(pg, NULL);
                pthread_mutex_unlock(&pg->mu);
            }
            backoff = 0;
        }
        struct pollfd fds[2] = {{.fd = PQsocket(c->conn), .events = POLLIN},
                                {.fd = pg->wake_fd, .events = POLLIN}};
        int n = poll(fds, 2, 10000);
        if (n < 0 && errno != EINTR) {
            backoff = 1;
            tk_pg_disconnect(c);
            c = NULL;
            atomic_store(&pg->up_listener, 0);
            continue;
        }
        if (fds[1].revents & POLLIN) {
            uint64_t v;
            if (read(pg->wake_fd, &v, sizeof v) < 0) {
                /* nothing to do: the flag is what matters */
            }
        }
        if (n == 0) {
            /* Quiet for a while: make sure the connection is still alive
             * (a dead peer is otherwise only noticed on the next write). */
            PGresult *r = PQexec(c->conn, "SELECT 1");
            int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
            PQclear(r);
            if (!ok) {
                backoff = 1;
                tk_pg_disconnect(c);
                c = NULL;
                atomic_store(&pg->up_listener, 0);
                continue;
            }
        }
        if (!PQconsumeInput(c->conn) || PQstatus(c->conn) != CONNECTION_OK) {
            backoff = 1;
            tk_pg_disconnect(c);
            c = NULL;
            atomic_store(&pg->up_listener, 0);
            continue;
        }
        PGnotify *nt;
        int ready = 0;
        int64_t due = 0;
        pthread_mutex_lock(&pg->mu);
        while ((nt = PQnotifies(c->conn)) != NULL) {
            if (!strcmp(nt->relname, "tasker_ready")) {
                if (nt->extra && nt->extra[0]) {
                    int64_t d = strtoll(nt->extra, NULL, 10);
                    if (d > 0 && (!due || d < due))
                        due = d;
                } else {
                    ready = 1;
                }
            } else if (!strcmp(nt->relname, "tasker_done") && nt->extra) {
                tk_pg_wake_waiters_locked(pg, nt->extra);
            }
            PQfreemem(nt);
        }
        if (ready)
            tk_pg_wake_ready_locked(pg);
        if (due) {
            if (!pg->next_due_ms || due < pg->next_due_ms)
                pg->next_due_ms = due;
            pthread_cond_broadcast(&pg->claimer_cv);
            tk_pg_poll_arm_locked(pg, 0, due);
        }
        pthread_mutex_unlock(&pg->mu);
    }
    tk_pg_disconnect(c);
    atomic_store(&pg->up_listener, 0);
    return NULL;
}

int tk_pg_listener_start(tk_pg *pg)
{
    pg->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (pg->wake_fd < 0)
        return tk_err(TASKER_EIO, TASKER_CATEGORY_INTERNAL, NULL,
                      "could not create an eventfd: %s", strerror(errno));
    pg->listener_quit = 0;
    if (pthread_create(&pg->listener, NULL, listener_main, pg) != 0)
        return tk_err(TASKER_EIO, TASKER_CATEGORY_INTERNAL, NULL,
                      "could not start the postgres listener thread");
    pg->listener_on = 1;
    return TASKER_OK;
}

void tk_pg_listener_stop(tk_pg *pg)
{
    if (!pg->listener_on)
        return;
    pthread_mutex_lock(&pg->mu);
    pg->listener_quit = 1;
    pthread_mutex_unlock(&pg->mu);
    uint64_t one = 1;
    if (write(pg->wake_fd, &one, sizeof one) < 0) {
        /* the thread also polls with a timeout */
    }
    pthread_join(pg->listener, NULL);
    pg->listener_on = 0;
}

/* ---- poll mode ------------------------------------------------------------ */

int tk_pg_fd(tk_pg *pg, int *fd_out)
{
    int rc = TASKER_OK;
    pthread_mutex_lock(&pg->mu);
    if (pg->closing) {
        rc = tk_err(TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL, "coordinator is closed");
    } else if (pg->epfd < 0) {
        /* The timer runs on the wall clock: due times come from the
         * database as Unix milliseconds. */
        int ep = epoll_create1(EPOLL_CLOEXEC);
        int ev = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        int tf = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
        struct epoll_event e1 = {.events = EPOLLIN, .data.fd = ev};
        struct epoll_event e2 = {.events = EPOLLIN, .data.fd = tf};
        if (ep < 0 || ev < 0 || tf < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e1) < 0 ||
            epoll_ctl(ep, EPOLL_CTL_ADD, tf, &e2) < 0) {
            int err = errno;
            if (ep >= 0)
                close(ep);
            if (ev >= 0)
                close(ev);
            if (tf >= 0)
                close(tf);
            rc = tk_err(TASKER_EIO, TASKER_CATEGORY_INTERNAL, NULL,
                        "could not create the poll-mode descriptor: %s", strerror(err));
        } else {
            pg->epfd = ep;
            pg->evfd = ev;
            pg->tfd = tf;
            pg->ev_armed = 0;
            pg->tfd_due_ms = 0;
            /* Whatever is in the database already is ready now. */
            tk_pg_poll_arm_locked(pg, 1, 0);
        }
    }
    if (rc == TASKER_OK)
        *fd_out = pg->epfd;
    pthread_mutex_unlock(&pg->mu);
    return rc;
}
