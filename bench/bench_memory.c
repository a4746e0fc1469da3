/*
 * bench_memory.c - throughput, per-step overhead and memory of the memory store.
 *
 * Every handler is a no-op that completes its step at once, so what is
 * measured is tasker's own cost: creating tasks, readiness, claiming,
 * completing and recording transitions.  Each throughput figure is wall time
 * from the first tasker_task_create() to the last task seen final, so it
 * includes task creation (the worker threads are already running and work
 * while tasks are still being created).  Every measurement runs on a fresh
 * coordinator and is repeated; the line's value is the median, the best run is
 * in params.
 *
 * Output: one JSON object per line on stdout (DESIGN.md section 8):
 *   {"bench": "...", "metric": "...", "value": N, "unit": "...", "params": {...}}
 * Diagnostics go to stderr.  Exit status 1 if any task did not complete.
 *
 * Usage: bench_memory [--repeats N] [--only NAME[,NAME...]]
 *   NAME: independent diamond10 fanout100k step_overhead pending_step_bytes idle_rss
 *   (step_overhead and the 2-worker scaling line come with diamond10).
 */
#define _GNU_SOURCE

#include <tasker.h>

#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef TASKER_BENCH_BUILD_TYPE
#define TASKER_BENCH_BUILD_TYPE "unknown"
#endif
#ifndef TASKER_BENCH_C_FLAGS
#define TASKER_BENCH_C_FLAGS ""
#endif

#define NS "bench"

static unsigned g_repeats = 9;
static const char *g_only = NULL;

/* ------------------------------------------------------------------------ */
/* Small utilities                                                          */
/* ------------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time of the whole process (every thread), in seconds. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void check(int rc, const char *what)
{
    if (rc == TASKER_OK) {
        return;
    }
    const tasker_error *err = tasker_error_last();
    fprintf(stderr, "bench_memory: %s: %s: %s %s\n", what, tasker_strerror(rc), err->message,
            err->context_json);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL) {
        fprintf(stderr, "bench_memory: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static int wanted(const char *name)
{
    if (g_only == NULL) {
        return 1;
    }
    size_t n = strlen(name);
    for (const char *p = g_only; (p = strstr(p, name)) != NULL; p += n) {
        int starts = p == g_only || p[-1] == ',';
        int ends = p[n] == '\0' || p[n] == ',';
        if (starts && ends) {
            return 1;
        }
    }
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of n values (sorts them in place). */
static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

static double minimum(const double *v, size_t n)
{
    double m = v[0];
    for (size_t i = 1; i < n; i++) {
        m = v[i] < m ? v[i] : m;
    }
    return m;
}

/* The 1-minute load average: other processes on a shared machine skew figures. */
static double loadavg_1m(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f != NULL) {
        if (fscanf(f, "%lf", &l) != 1) {
            l = -1;
        }
        fclose(f);
    }
    return l;
}

/* Prints one result line.  `params_fmt` formats the inside of the params
 * object (without braces); the build type is appended. */
static void emit(const char *bench, const char *metric, double value, const char *unit,
                 const char *params_fmt, ...)
{
    char params[2048];
    va_list ap;
    va_start(ap, params_fmt);
    vsnprintf(params, sizeof params, params_fmt, ap);
    va_end(ap);
    printf("{\"bench\": \"%s\", \"metric\": \"%s\", \"value\": %.6g, \"unit\": \"%s\", "
           "\"params\": {%s%s\"build\": \"%s\", \"cflags\": \"%s\", \"tasker\": \"%s\", "
           "\"loadavg_1m\": %.2f}}\n",
           bench, metric, value, unit, params, params[0] ? ", " : "", TASKER_BENCH_BUILD_TYPE,
           TASKER_BENCH_C_FLAGS, tasker_version(), loadavg_1m());
    fflush(stdout);
}

/* A field of /proc/self/status in KiB ("VmRSS", "RssAnon", "RssFile"); -1 if absent. */
static long status_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) {
        return -1;
    }
    char line[256];
    size_t n = strlen(field);
    long kib = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, field, n) == 0 && line[n] == ':' &&
            sscanf(line + n + 1, "%ld", &kib) == 1) {
            break;
        }
    }
    fclose(f);
    return kib;
}

static long vm_rss_kib(void)
{
    return status_kib("VmRSS");
}

/* Bytes handed out by malloc and not freed (all arenas). */
static size_t heap_in_use(void)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------------ */
/* Handlers and templates                                                   */
/* ------------------------------------------------------------------------ */

static int noop_handler(tasker_step *step, void *userdata)
{
    (void)userdata;
    return tasker_step_succeed(step, NULL, 0);
}

/* The baseline for per-step overhead: the same call shape as a handler,
 * through a pointer the compiler cannot see through. */
static int noop_function(tasker_step *step, void *userdata)
{
    (void)step;
    (void)userdata;
    return 0;
}

struct workload {
    const char *bench;     /* result line name */
    const char *tmpl_name; /* template name in namespace NS */
    size_t tasks;
    size_t steps_per_task;
    tasker_template *tmpl;
};

static void add_step(tasker_template *t, const char *name, const char *const *deps, size_t n)
{
    check(tasker_template_add_step(t, name, "noop", deps, n, NULL), "tasker_template_add_step");
}

/* One step, no dependencies. */
static tasker_template *build_single(void)
{
    tasker_template *t = NULL;
    check(tasker_template_new(&t, NS, "single", "1"), "tasker_template_new");
    add_step(t, "only", NULL, 0);
    return t;
}

/* diamond-10: root -> m0..m7 in parallel -> sink. */
static tasker_template *build_diamond10(void)
{
    tasker_template *t = NULL;
    check(tasker_template_new(&t, NS, "diamond10", "1"), "tasker_template_new");
    const char *root[] = {"root"};
    const char *mids[] = {"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"};
    add_step(t, "root", NULL, 0);
    for (size_t i = 0; i < 8; i++) {
        add_step(t, mids[i], root, 1);
    }
    add_step(t, "sink", mids, 8);
    return t;
}

/* root -> (n - 2) parallel steps -> sink, built with the builder API. */
static tasker_template *build_fanout(size_t n_steps)
{
    tasker_template *t = NULL;
    check(tasker_template_new(&t, NS, "fanout", "1"), "tasker_template_new");
    size_t width = n_steps - 2;
    char *names = xmalloc(width * 24);
    const char **deps = xmalloc(width * sizeof *deps);
    const char *root[] = {"root"};
    add_step(t, "root", NULL, 0);
    for (size_t i = 0; i < width; i++) {
        snprintf(names + i * 24, 24, "w%zu", i);
        deps[i] = names + i * 24;
        add_step(t, deps[i], root, 1);
    }
    add_step(t, "sink", deps, width);
    free(deps);
    free(names);
    return t;
}

static tasker_coordinator *open_coordinator(const tasker_template *tmpl, double *register_s)
{
    tasker_coordinator *coord = NULL;
    check(tasker_coordinator_open(&coord, NULL), "tasker_coordinator_open");
    check(tasker_handler_register(coord, "noop", noop_handler, NULL, NULL),
          "tasker_handler_register");
    double t0 = now_s();
    check(tasker_template_register(coord, tmpl), "tasker_template_register");
    if (register_s != NULL) {
        *register_s = now_s() - t0;
    }
    return coord;
}

static void create_tasks(char (*uuids)[TASKER_UUID_BUFSIZE], tasker_coordinator *coord,
                         const char *tmpl_name, size_t n)
{
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = NS;
    req.name = tmpl_name;
    req.template_version = "1";
    for (size_t i = 0; i < n; i++) {
        check(tasker_task_create(uuids[i], coord, &req), "tasker_task_create");
    }
}

/* ------------------------------------------------------------------------ */
/* Throughput                                                               */
/* ------------------------------------------------------------------------ */

struct run_stats {
    double total_s[64];  /* create + run, per repeat */
    double create_s[64]; /* create loop only, per repeat */
    double cpu_s[64];    /* process CPU time (all threads) over the same span */
    double register_s;   /* template registration, last repeat */
    unsigned n;
};

/*
 * One repeat: a fresh coordinator with `workers` threads running, then
 * create every task and wait for each in turn.  Exits if a task does not
 * complete: a throughput figure for failed work would be meaningless.
 */
static void run_once(const struct workload *w, unsigned workers, struct run_stats *st)
{
    char (*uuids)[TASKER_UUID_BUFSIZE] = xmalloc(w->tasks * sizeof *uuids);
    double register_s = 0;
    tasker_coordinator *coord = open_coordinator(w->tmpl, &register_s);
    check(tasker_coordinator_start(coord, workers), "tasker_coordinator_start");

    double c0 = cpu_s();
    double t0 = now_s();
    create_tasks(uuids, coord, w->tmpl_name, w->tasks);
    double t_created = now_s();
    /* Wait newest first: tasks run roughly in creation order, so by the time
     * the newest is final the others are too, and the waiting thread wakes up
     * about once instead of once per task (which would measure the waiter's
     * context switches rather than tasker's work). */
    for (size_t k = w->tasks; k-- > 0;) {
        size_t i = k;
        tasker_task_state state = TASKER_TASK_PENDING;
        check(tasker_task_wait(&state, coord, uuids[i], -1), "tasker_task_wait");
        if (state != TASKER_TASK_COMPLETE) {
            fprintf(stderr, "bench_memory: %s: task %s ended %s\n", w->bench, uuids[i],
                    tasker_task_state_name(state));
            exit(1);
        }
    }
    double t1 = now_s();
    double c1 = cpu_s();

    check(tasker_coordinator_stop(coord, -1), "tasker_coordinator_stop");
    check(tasker_coordinator_close(coord), "tasker_coordinator_close");
    free(uuids);

    st->total_s[st->n] = t1 - t0;
    st->create_s[st->n] = t_created - t0;
    st->cpu_s[st->n] = c1 - c0;
    st->register_s = register_s;
    st->n++;
}

/* Runs the repeats and prints the throughput line; returns the median
 * steps/s.  The per-repeat times stay in `st` for derived figures. */
static double throughput(const char *bench, const struct workload *w, unsigned workers,
                         struct run_stats *st, const char *extra_params)
{
    memset(st, 0, sizeof *st);
    for (unsigned r = 0; r < g_repeats; r++) {
        run_once(w, workers, st);
    }
    double steps = (double)(w->tasks * w->steps_per_task);
    double sorted[64];
    memcpy(sorted, st->total_s, st->n * sizeof(double));
    double med_s = median(sorted, st->n);
    double best_s = minimum(st->total_s, st->n);
    memcpy(sorted, st->create_s, st->n * sizeof(double));
    double med_create_s = median(sorted, st->n);
    memcpy(sorted, st->cpu_s, st->n * sizeof(double));
    double med_cpu_s = median(sorted, st->n);

    emit(bench, "throughput", steps / med_s, "steps/s",
         "\"tasks\": %zu, \"steps_per_task\": %zu, \"steps\": %.0f, \"workers\": %u, "
         "\"handler\": \"noop C\", \"includes_task_creation\": true, "
         "\"wait\": \"tasker_task_wait on each task, newest first\", "
         "\"stat\": \"median\", \"repeats\": %u, \"median\": %.0f, \"best\": %.0f, "
         "\"median_wall_ms\": %.3f, \"median_create_ms\": %.3f, \"median_cpu_ms\": %.3f, "
         "\"register_ms\": %.3f%s",
         w->tasks, w->steps_per_task, steps, workers, st->n, steps / med_s, steps / best_s,
         med_s * 1e3, med_create_s * 1e3, med_cpu_s * 1e3, st->register_s * 1e3,
         extra_params != NULL ? extra_params : "");
    return steps / med_s;
}

static void bench_independent(void)
{
    struct workload w = {"memory.independent", "single", 10000, 1, build_single()};
    struct run_stats st;
    throughput(w.bench, &w, 1, &st, NULL);
    tasker_template_free(w.tmpl);
}

static double baseline_ns_per_call(size_t calls)
{
    int (*volatile fn)(tasker_step *, void *) = noop_function;
    double best = 1e30;
    for (unsigned r = 0; r < g_repeats; r++) {
        double t0 = now_s();
        for (size_t i = 0; i < calls; i++) {
            fn(NULL, NULL);
        }
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    return best * 1e9 / (double)calls;
}

static void bench_diamond10(int with_overhead)
{
    struct workload w = {"memory.diamond10", "diamond10", 1000, 10, build_diamond10()};
    double steps = (double)(w.tasks * w.steps_per_task);
    struct run_stats st1, st2;

    double tp1 = throughput("memory.diamond10", &w, 1, &st1, NULL);

    if (with_overhead) {
        double sorted[64];
        memcpy(sorted, st1.total_s, st1.n * sizeof(double));
        double per_step_med = median(sorted, st1.n) * 1e9 / steps;
        double per_step_best = minimum(st1.total_s, st1.n) * 1e9 / steps;
        memcpy(sorted, st1.cpu_s, st1.n * sizeof(double));
        double cpu_per_step_med = median(sorted, st1.n) * 1e9 / steps;
        double base = baseline_ns_per_call((size_t)steps * 100);
        emit("memory.step_overhead", "overhead", per_step_med - base, "ns",
             "\"workload\": \"memory.diamond10\", \"tasks\": %zu, \"workers\": 1, "
             "\"definition\": \"wall ns per step (create + run) minus ns per call of a no-op "
             "function\", \"stat\": \"median\", \"repeats\": %u, "
             "\"per_step_ns_median\": %.1f, \"per_step_ns_best\": %.1f, "
             "\"best\": %.1f, \"baseline_ns_per_call\": %.2f, "
             "\"cpu_ns_per_step_median\": %.1f",
             w.tasks, st1.n, per_step_med, per_step_best, per_step_best - base, base,
             cpu_per_step_med);
    }

    /* Same work with two worker threads: the scaling figure. */
    double tp2 = throughput("memory.diamond10.workers2", &w, 2, &st2, NULL);
    emit("memory.scaling", "speedup", tp2 / tp1, "ratio",
         "\"workload\": \"memory.diamond10\", \"from_workers\": 1, \"to_workers\": 2, "
         "\"throughput_1\": %.0f, \"throughput_2\": %.0f, \"stat\": \"median\", "
         "\"cpus_online\": %ld",
         tp1, tp2, sysconf(_SC_NPROCESSORS_ONLN));
    tasker_template_free(w.tmpl);
}

static void bench_fanout(void)
{
    const size_t n = 100000;
    double t0 = now_s();
    struct workload w = {"memory.fanout100k", "fanout", 1, n, build_fanout(n)};
    double build_s = now_s() - t0;
    struct run_stats st;
    unsigned saved = g_repeats;
    g_repeats = g_repeats > 3 ? 3 : g_repeats; /* one run is ~100k steps already */
    char extra[96];
    snprintf(extra, sizeof extra, ", \"template_build_ms\": %.3f", build_s * 1e3);
    throughput(w.bench, &w, 1, &st, extra);
    g_repeats = saved;
    tasker_template_free(w.tmpl);
}

/* ------------------------------------------------------------------------ */
/* Memory, measured in fresh child processes                                */
/* ------------------------------------------------------------------------ */

/*
 * The memory figures are taken in a freshly exec'd copy of this program, so
 * allocations and freed-but-cached heap from the throughput runs do not hide
 * or inflate what a coordinator costs.  The child prints numbers on one line;
 * the parent collects several runs and prints the result lines.
 */

#define PENDING_TASKS 10000

static int child_pending(void)
{
    tasker_template *t = build_diamond10();
    tasker_coordinator *coord = open_coordinator(t, NULL);
    char (*uuids)[TASKER_UUID_BUFSIZE] = xmalloc(PENDING_TASKS * sizeof *uuids);
    memset(uuids, 0, PENDING_TASKS * sizeof *uuids); /* touch it before the "before" reading */

    long rss0 = vm_rss_kib();
    size_t heap0 = heap_in_use();
    create_tasks(uuids, coord, "diamond10", PENDING_TASKS); /* no worker: all stay pending */
    long rss1 = vm_rss_kib();
    size_t heap1 = heap_in_use();

    printf("%ld %ld %zu %zu\n", rss0, rss1, heap0, heap1);
    check(tasker_coordinator_close(coord), "tasker_coordinator_close");
    tasker_template_free(t);
    free(uuids);
    return 0;
}

static int child_idle(void)
{
    long before = vm_rss_kib();
    tasker_coordinator *coord = NULL;
    check(tasker_coordinator_open(&coord, NULL), "tasker_coordinator_open");
    check(tasker_coordinator_start(coord, 1), "tasker_coordinator_start");
    struct timespec ts = {0, 200 * 1000000L}; /* let the worker reach its idle wait */
    nanosleep(&ts, NULL);
    long idle = vm_rss_kib();
    printf("%ld %ld %ld %ld\n", before, idle, status_kib("RssAnon"), status_kib("RssFile"));
    fflush(stdout);
    check(tasker_coordinator_stop(coord, -1), "tasker_coordinator_stop");
    check(tasker_coordinator_close(coord), "tasker_coordinator_close");
    return 0;
}

/* Runs this program with `--child mode` and reads its one output line. */
static int run_child(char *line, size_t cap, const char *mode)
{
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        perror("bench_memory: readlink /proc/self/exe");
        return -1;
    }
    exe[n] = '\0';
    int fds[2];
    if (pipe(fds) != 0) {
        perror("bench_memory: pipe");
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("bench_memory: fork");
        return -1;
    }
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execl(exe, exe, "--child", mode, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t used = 0;
    ssize_t got;
    while (used + 1 < cap && (got = read(fds[0], line + used, cap - 1 - used)) != 0) {
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        used += (size_t)got;
    }
    line[used] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "bench_memory: child '%s' failed\n", mode);
        return -1;
    }
    return 0;
}

static void bench_pending(void)
{
    double per_step[64], heap_per_step[64];
    long rss_delta_kib = 0;
    unsigned n = 0;
    const double steps = PENDING_TASKS * 10.0;
    for (unsigned r = 0; r < g_repeats; r++) {
        char line[256];
        long rss0, rss1;
        size_t heap0, heap1;
        if (run_child(line, sizeof line, "pending") != 0 ||
            sscanf(line, "%ld %ld %zu %zu", &rss0, &rss1, &heap0, &heap1) != 4) {
            exit(1);
        }
        per_step[n] = (double)(rss1 - rss0) * 1024.0 / steps;
        heap_per_step[n] = (double)(heap1 - heap0) / steps;
        rss_delta_kib = rss1 - rss0;
        n++;
    }
    double med = median(per_step, n);
    double heap_med = median(heap_per_step, n);
    emit("memory.pending_step_bytes", "memory_per_pending_step", med, "bytes",
         "\"tasks\": %d, \"steps_per_task\": 10, \"steps\": %.0f, \"workers\": 0, "
         "\"definition\": \"VmRSS growth while creating the tasks with no worker started, "
         "divided by the number of steps (fresh process)\", \"stat\": \"median\", "
         "\"repeats\": %u, \"rss_delta_kib_last\": %ld, \"heap_bytes_per_step_median\": %.1f",
         PENDING_TASKS, steps, n, rss_delta_kib, heap_med);
}

static void bench_idle(void)
{
    double idle[64], anon[64], file[64];
    long before = 0;
    unsigned n = 0;
    for (unsigned r = 0; r < g_repeats; r++) {
        char line[256];
        long b, i, a, f;
        if (run_child(line, sizeof line, "idle") != 0 ||
            sscanf(line, "%ld %ld %ld %ld", &b, &i, &a, &f) != 4) {
            exit(1);
        }
        idle[n] = (double)i;
        anon[n] = (double)a;
        file[n] = (double)f;
        before = b;
        n++;
    }
    double med = median(idle, n);
    /* RssFile is mostly the shared libraries' pages (libc, jansson, and what
     * libtasker links); RssAnon is heap, stacks and relocated data. */
    emit("memory.idle_rss", "rss", med, "KiB",
         "\"workers\": 1, \"definition\": \"VmRSS of a fresh process after "
         "tasker_coordinator_open + tasker_coordinator_start(1) with nothing to do\", "
         "\"stat\": \"median\", \"repeats\": %u, \"process_rss_before_open_kib\": %ld, "
         "\"coordinator_delta_kib\": %.0f, \"rss_anon_kib\": %.0f, \"rss_file_kib\": %.0f",
         n, before, med - (double)before, median(anon, n), median(file, n));
}

/* ------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_memory [--repeats N] [--only NAME[,NAME...]]\n"
            "  NAME: independent diamond10 fanout100k step_overhead pending_step_bytes "
            "idle_rss\n");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--child") == 0 && i + 1 < argc) {
            if (strcmp(argv[i + 1], "pending") == 0) {
                return child_pending();
            }
            if (strcmp(argv[i + 1], "idle") == 0) {
                return child_idle();
            }
            usage();
            return 2;
        } else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
            long r = strtol(argv[++i], NULL, 10);
            if (r < 1 || r > 64) {
                fprintf(stderr, "bench_memory: --repeats must be 1..64\n");
                return 2;
            }
            g_repeats = (unsigned)r;
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            g_only = argv[++i];
        } else {
            usage();
            return 2;
        }
    }

    check(tasker_abi_check(TASKER_ABI_VERSION), "tasker_abi_check");

    if (wanted("independent")) {
        bench_independent();
    }
    if (wanted("diamond10") || wanted("step_overhead")) {
        bench_diamond10(wanted("step_overhead"));
    }
    if (wanted("fanout100k")) {
        bench_fanout();
    }
    if (wanted("pending_step_bytes")) {
        bench_pending();
    }
    if (wanted("idle_rss")) {
        bench_idle();
    }
    return 0;
}
