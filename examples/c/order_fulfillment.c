/*
 * order_fulfillment.c - an order-fulfillment workflow on tasker's memory store.
 *
 *   validate -> reserve_inventory  -> ship -> notify
 *            -> authorize_payment  ->
 *
 * reserve_inventory and authorize_payment run in parallel once validate has
 * finished; ship waits for both.  Every handler does a few milliseconds of
 * simulated work (nanosleep) and passes a JSON result to its dependents.  The
 * simulated payment gateway times out on the first attempt, so the run shows a
 * retryable failure followed by a successful retry.
 *
 * The program prints the task's outcome and a per-step timing table read back
 * from tasker_task_get(), and exits non-zero unless the task completed.
 */
#define _DEFAULT_SOURCE /* timegm */

#include <tasker.h>

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WORKER_THREADS 2
#define TASK_TIMEOUT_MS 10000

static const char TEMPLATE_JSON[] =
    "{\"namespace\": \"shop\", \"name\": \"order_fulfillment\", \"version\": \"1\","
    " \"steps\": ["
    "  {\"name\": \"validate\", \"retry\": {\"max_attempts\": 1}},"
    "  {\"name\": \"reserve_inventory\", \"depends_on\": [\"validate\"],"
    "   \"retry\": {\"max_attempts\": 3, \"backoff\": \"exponential\", \"base_ms\": 10, \"max_ms\": 200}},"
    "  {\"name\": \"authorize_payment\", \"depends_on\": [\"validate\"],"
    "   \"retry\": {\"max_attempts\": 4, \"backoff\": \"exponential\", \"base_ms\": 20,"
    "             \"max_ms\": 500, \"jitter\": 0.2}, \"timeout_ms\": 5000},"
    "  {\"name\": \"ship\", \"depends_on\": [\"reserve_inventory\", \"authorize_payment\"]},"
    "  {\"name\": \"notify\", \"depends_on\": [\"ship\"]}"
    " ]}";

static const char ORDER_JSON[] =
    "{\"order_id\": \"ORD-1042\", \"currency\": \"GBP\","
    " \"customer\": {\"name\": \"Ada Lovelace\", \"email\": \"ada@example.com\"},"
    " \"shipping_address\": {\"country\": \"GB\", \"postcode\": \"N1 9GU\"},"
    " \"items\": [{\"sku\": \"BOOK-ENGINE\", \"qty\": 1, \"unit_price_cents\": 2499},"
    "           {\"sku\": \"PEN-FOUNTAIN\", \"qty\": 2, \"unit_price_cents\": 1250}]}";

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static void simulate_work(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
        /* interrupted by a signal: sleep for the rest */
    }
}

static void die_on(int rc, const char *what)
{
    if (rc == TASKER_OK) {
        return;
    }
    const tasker_error *err = tasker_error_last();
    fprintf(stderr, "order_fulfillment: %s failed: %s\n  %s\n  context: %s\n", what,
            tasker_strerror(rc), err->message, err->context_json);
    exit(EXIT_FAILURE);
}

/* Fails the attempt for good: retrying cannot fix bad input. */
static int fail_permanently(tasker_step *step, const char *error_class, const char *message)
{
    tasker_failure failure = TASKER_FAILURE_INIT;
    failure.error_class = error_class;
    failure.message = message;
    failure.retryable = 0;
    return tasker_step_fail(step, &failure);
}

/* Succeeds with `result` (a jansson value, consumed). */
static int succeed_with(tasker_step *step, json_t *result)
{
    char *text = json_dumps(result, JSON_COMPACT);
    json_decref(result);
    if (text == NULL) {
        return fail_permanently(step, "EncodingError", "could not encode the step result");
    }
    int rc = tasker_step_succeed(step, text, strlen(text));
    free(text);
    return rc;
}

/* Parses the result of dependency `dep` of this step; NULL if unreadable. */
static json_t *dependency_result(const tasker_step *step, const char *dep)
{
    const char *json = NULL;
    size_t len = 0;
    if (tasker_step_dependency_result(&json, &len, step, dep) != TASKER_OK) {
        return NULL;
    }
    return json_loadb(json, len, 0, NULL);
}

static json_t *task_context(const tasker_step *step)
{
    size_t len = 0;
    const char *json = tasker_step_context(step, &len);
    return json == NULL ? NULL : json_loadb(json, len, 0, NULL);
}

/* ------------------------------------------------------------------------ */
/* validate: checks the order and prices it                                 */
/* ------------------------------------------------------------------------ */

static int validate(tasker_step *step, void *userdata)
{
    (void)userdata;
    simulate_work(2);

    json_t *order = task_context(step);
    const char *order_id = json_string_value(json_object_get(order, "order_id"));
    const char *currency = json_string_value(json_object_get(order, "currency"));
    const char *email =
        json_string_value(json_object_get(json_object_get(order, "customer"), "email"));
    json_t *items = json_object_get(order, "items");

    const char *problem = NULL;
    if (order_id == NULL || currency == NULL) {
        problem = "order_id and currency are required";
    } else if (email == NULL || strchr(email, '@') == NULL) {
        problem = "customer.email is not an e-mail address";
    } else if (!json_is_array(items) || json_array_size(items) == 0) {
        problem = "an order needs at least one item";
    }

    json_int_t total = 0;
    json_t *lines = json_array();
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item)
    {
        const char *sku = json_string_value(json_object_get(item, "sku"));
        json_t *qty = json_object_get(item, "qty");
        json_t *price = json_object_get(item, "unit_price_cents");
        if (problem == NULL && (sku == NULL || !json_is_integer(qty) ||
                                json_integer_value(qty) <= 0 || !json_is_integer(price) ||
                                json_integer_value(price) < 0)) {
            problem = "every item needs a sku, a positive qty and a unit_price_cents";
        }
        if (problem == NULL) {
            total += json_integer_value(qty) * json_integer_value(price);
            json_array_append_new(lines, json_pack("{s:s, s:I}", "sku", sku, "qty",
                                                   json_integer_value(qty)));
        }
    }

    int rc;
    if (problem != NULL) {
        json_decref(lines);
        rc = fail_permanently(step, "ValidationError", problem);
    } else {
        rc = succeed_with(step, json_pack("{s:s, s:s, s:I, s:o}", "order_id", order_id,
                                          "currency", currency, "total_cents", total,
                                          "lines", lines));
    }
    json_decref(order);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* reserve_inventory: holds stock in a (simulated) warehouse                */
/* ------------------------------------------------------------------------ */

struct stock_item {
    const char *sku;
    long available;
};

struct warehouse {
    pthread_mutex_t lock; /* guards stock and reserved_order */
    struct stock_item stock[3];
    /* Reserving is keyed by order id, so a retried attempt does not take the
     * stock twice: handlers should be idempotent because tasker retries. */
    char reserved_order[64];
};

static int reserve_inventory(tasker_step *step, void *userdata)
{
    struct warehouse *wh = userdata;
    simulate_work(3);

    json_t *order = dependency_result(step, "validate");
    const char *order_id = json_string_value(json_object_get(order, "order_id"));
    json_t *lines = json_object_get(order, "lines");
    if (order_id == NULL || !json_is_array(lines)) {
        json_decref(order);
        return fail_permanently(step, "InputError", "validate returned no order lines");
    }

    const char *short_sku = NULL;
    pthread_mutex_lock(&wh->lock);
    if (strcmp(wh->reserved_order, order_id) != 0) {
        size_t i;
        json_t *line;
        /* Check every line first so a short line takes nothing. */
        json_array_foreach(lines, i, line)
        {
            const char *sku = json_string_value(json_object_get(line, "sku"));
            json_int_t qty = json_integer_value(json_object_get(line, "qty"));
            int found = 0;
            for (size_t s = 0; s < sizeof wh->stock / sizeof wh->stock[0]; s++) {
                if (sku != NULL && strcmp(wh->stock[s].sku, sku) == 0) {
                    found = wh->stock[s].available >= qty;
                }
            }
            if (!found && short_sku == NULL) {
                short_sku = sku != NULL ? sku : "?";
            }
        }
        if (short_sku == NULL) {
            json_array_foreach(lines, i, line)
            {
                const char *sku = json_string_value(json_object_get(line, "sku"));
                for (size_t s = 0; s < sizeof wh->stock / sizeof wh->stock[0]; s++) {
                    if (strcmp(wh->stock[s].sku, sku) == 0) {
                        wh->stock[s].available -= json_integer_value(json_object_get(line, "qty"));
                    }
                }
            }
            snprintf(wh->reserved_order, sizeof wh->reserved_order, "%s", order_id);
        }
    }
    pthread_mutex_unlock(&wh->lock);

    int rc;
    if (short_sku != NULL) {
        char message[160];
        snprintf(message, sizeof message, "not enough stock of %s", short_sku);
        rc = fail_permanently(step, "OutOfStock", message);
    } else {
        char reservation[32];
        snprintf(reservation, sizeof reservation, "RSV-%.8s", tasker_step_uuid(step));
        rc = succeed_with(step, json_pack("{s:s, s:s, s:O}", "reservation_id", reservation,
                                          "warehouse", "LON-1", "lines", lines));
    }
    json_decref(order);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* authorize_payment: asks a (simulated) card gateway                       */
/* ------------------------------------------------------------------------ */

static int authorize_payment(tasker_step *step, void *userdata)
{
    (void)userdata;
    simulate_work(4);

    uint32_t attempt = tasker_step_attempt(step);
    if (attempt == 1) {
        /* The simulated gateway does not answer in time on the first try.  A
         * timeout is transient, so the failure is retryable, and the gateway
         * asks for 15 ms before the next call, which overrides the backoff. */
        char context[64];
        snprintf(context, sizeof context, "{\"gateway\": \"sim-pay\", \"attempt\": %u}",
                 (unsigned)attempt);
        tasker_failure failure = TASKER_FAILURE_INIT;
        failure.error_class = "PaymentGatewayTimeout";
        failure.message = "the payment gateway did not answer within 4 ms";
        failure.retryable = 1;
        failure.retry_after_ms = 15;
        failure.context_json = context;
        return tasker_step_fail(step, &failure);
    }

    json_t *order = dependency_result(step, "validate");
    json_t *total = json_object_get(order, "total_cents");
    const char *currency = json_string_value(json_object_get(order, "currency"));
    int rc;
    if (!json_is_integer(total) || currency == NULL) {
        rc = fail_permanently(step, "InputError", "validate returned no total");
    } else {
        char authorization[32];
        snprintf(authorization, sizeof authorization, "AUTH-%.8s", tasker_step_uuid(step));
        rc = succeed_with(step, json_pack("{s:s, s:O, s:s}", "authorization_id", authorization,
                                          "amount_cents", total, "currency", currency));
    }
    json_decref(order);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* ship: books a carrier once stock is held and payment authorized          */
/* ------------------------------------------------------------------------ */

static int ship(tasker_step *step, void *userdata)
{
    (void)userdata;
    simulate_work(5);

    json_t *reservation = dependency_result(step, "reserve_inventory");
    json_t *payment = dependency_result(step, "authorize_payment");
    const char *reservation_id =
        json_string_value(json_object_get(reservation, "reservation_id"));
    const char *authorization_id =
        json_string_value(json_object_get(payment, "authorization_id"));

    int rc;
    if (reservation_id == NULL || authorization_id == NULL) {
        rc = fail_permanently(step, "InputError", "missing reservation or authorization");
    } else {
        /* A tracking number derived from the step's UUID: unique per attempt. */
        const char *uuid = tasker_step_uuid(step);
        char tracking[32];
        snprintf(tracking, sizeof tracking, "RM%.4s%.4sGB", uuid + 24, uuid + 28);
        rc = succeed_with(step, json_pack("{s:s, s:s, s:s, s:s}", "carrier", "Royal Mail",
                                          "tracking_number", tracking, "reservation_id",
                                          reservation_id, "authorization_id",
                                          authorization_id));
    }
    json_decref(reservation);
    json_decref(payment);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* notify: tells the customer                                               */
/* ------------------------------------------------------------------------ */

static int notify(tasker_step *step, void *userdata)
{
    (void)userdata;
    simulate_work(1);

    json_t *order = task_context(step);
    json_t *shipment = dependency_result(step, "ship");
    const char *email =
        json_string_value(json_object_get(json_object_get(order, "customer"), "email"));
    const char *order_id = json_string_value(json_object_get(order, "order_id"));
    const char *tracking = json_string_value(json_object_get(shipment, "tracking_number"));

    int rc;
    if (email == NULL || order_id == NULL || tracking == NULL) {
        rc = fail_permanently(step, "InputError", "missing e-mail, order id or tracking number");
    } else {
        char subject[128];
        snprintf(subject, sizeof subject, "Your order %s is on its way", order_id);
        rc = succeed_with(step, json_pack("{s:s, s:s, s:s, s:s}", "channel", "email", "to",
                                          email, "subject", subject, "tracking_number",
                                          tracking));
    }
    json_decref(order);
    json_decref(shipment);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Report                                                                   */
/* ------------------------------------------------------------------------ */

/* Seconds since the epoch from the task JSON's "2026-11-23T17:11:07.123456Z";
 * negative if absent or malformed. */
static double iso_seconds(json_t *value)
{
    const char *text = json_string_value(value);
    struct tm tm = {0};
    double sec = 0;
    if (text == NULL || sscanf(text, "%4d-%2d-%2dT%2d:%2d:%lfZ", &tm.tm_year, &tm.tm_mon,
                               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &sec) != 6) {
        return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (double)timegm(&tm) + sec;
}

static void print_report(const char *task_json)
{
    json_error_t jerr;
    json_t *task = json_loads(task_json, 0, &jerr);
    if (task == NULL) {
        fprintf(stderr, "order_fulfillment: cannot parse the task JSON: %s\n", jerr.text);
        return;
    }

    json_t *duration = json_object_get(task, "duration_ms");
    printf("task %s  %s/%s@%s\n",
           json_string_value(json_object_get(task, "uuid")),
           json_string_value(json_object_get(task, "namespace")),
           json_string_value(json_object_get(task, "name")),
           json_string_value(json_object_get(task, "version")));
    if (json_is_number(duration)) {
        printf("outcome: %s in %.1f ms\n\n",
               json_string_value(json_object_get(task, "state")), json_number_value(duration));
    } else {
        printf("outcome: %s\n\n", json_string_value(json_object_get(task, "state")));
    }

    /* Times are in ms from the task's creation.  first_claim: the first
     * attempt was handed to a worker (the "claimed" transition); it shows the
     * two middle steps running side by side.  last_start and duration_ms: the
     * last attempt, from the step's own fields. */
    double created = iso_seconds(json_object_get(task, "created_at"));
    json_t *transitions = json_object_get(task, "transitions");
    printf("%-18s %-9s %8s %12s %11s %12s\n", "step", "state", "attempts", "first_claim",
           "last_start", "duration_ms");
    printf("%-18s %-9s %8s %12s %11s %12s\n", "----", "-----", "--------", "-----------",
           "----------", "-----------");
    json_t *steps = json_object_get(task, "steps");
    size_t i;
    json_t *step;
    json_array_foreach(steps, i, step)
    {
        json_t *d = json_object_get(step, "duration_ms");
        const char *name = json_string_value(json_object_get(step, "name"));
        char dbuf[32] = "-", sbuf[32] = "-", fbuf[32] = "-";
        if (json_is_number(d)) {
            snprintf(dbuf, sizeof dbuf, "%.3f", json_number_value(d));
        }
        double started = iso_seconds(json_object_get(step, "started_at"));
        if (created >= 0 && started >= 0) {
            snprintf(sbuf, sizeof sbuf, "%.3f", (started - created) * 1e3);
        }
        size_t k;
        json_t *tr;
        json_array_foreach(transitions, k, tr)
        {
            const char *tr_step = json_string_value(json_object_get(tr, "step"));
            const char *reason = json_string_value(json_object_get(tr, "reason"));
            double at = iso_seconds(json_object_get(tr, "at"));
            if (tr_step != NULL && name != NULL && strcmp(tr_step, name) == 0 &&
                reason != NULL && strcmp(reason, "claimed") == 0 && created >= 0 && at >= 0) {
                snprintf(fbuf, sizeof fbuf, "%.3f", (at - created) * 1e3);
                break;
            }
        }
        printf("%-18s %-9s %8lld %12s %11s %12s\n", name,
               json_string_value(json_object_get(step, "state")),
               (long long)json_integer_value(json_object_get(step, "attempts")), fbuf, sbuf,
               dbuf);
    }

    /* Errors recorded on the way (the payment gateway timeout, here). */
    int printed_header = 0;
    json_array_foreach(steps, i, step)
    {
        size_t j;
        json_t *e;
        json_array_foreach(json_object_get(step, "errors"), j, e)
        {
            if (!printed_header) {
                printf("\nerrors recorded:\n");
                printed_header = 1;
            }
            printf("  %s attempt %lld: %s: %s (%s)\n",
                   json_string_value(json_object_get(step, "name")),
                   (long long)json_integer_value(json_object_get(e, "attempt")),
                   json_string_value(json_object_get(e, "class")),
                   json_string_value(json_object_get(e, "message")),
                   json_is_true(json_object_get(e, "retryable")) ? "retryable" : "permanent");
        }
    }

    /* The last step's result: what the customer was told. */
    json_t *last = json_array_get(steps, json_array_size(steps) - 1);
    json_t *result = json_object_get(last, "result");
    if (result != NULL && !json_is_null(result)) {
        char *text = json_dumps(result, JSON_COMPACT);
        printf("\n%s result: %s\n", json_string_value(json_object_get(last, "name")),
               text != NULL ? text : "?");
        free(text);
    }
    json_decref(task);
}

int main(void)
{
    static struct warehouse warehouse = {
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .stock = {{"BOOK-ENGINE", 12}, {"PEN-FOUNTAIN", 40}, {"INK-BLUE", 100}},
        .reserved_order = "",
    };

    tasker_coordinator *coord = NULL;
    die_on(tasker_coordinator_open(&coord, NULL), "tasker_coordinator_open");

    die_on(tasker_handler_register(coord, "validate", validate, NULL, NULL), "register validate");
    die_on(tasker_handler_register(coord, "reserve_inventory", reserve_inventory, &warehouse,
                                   NULL),
           "register reserve_inventory");
    die_on(tasker_handler_register(coord, "authorize_payment", authorize_payment, NULL, NULL),
           "register authorize_payment");
    die_on(tasker_handler_register(coord, "ship", ship, NULL, NULL), "register ship");
    die_on(tasker_handler_register(coord, "notify", notify, NULL, NULL), "register notify");
    die_on(tasker_template_register_json(coord, TEMPLATE_JSON, 0), "register the template");
    die_on(tasker_coordinator_start(coord, WORKER_THREADS), "tasker_coordinator_start");

    printf("tasker %s: order fulfillment on the memory store, %d worker threads\n\n",
           tasker_version(), WORKER_THREADS);

    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "shop";
    req.name = "order_fulfillment";
    req.context_json = ORDER_JSON;
    req.idempotency_key = "ORD-1042";
    char uuid[TASKER_UUID_BUFSIZE];
    die_on(tasker_task_create(uuid, coord, &req), "tasker_task_create");

    tasker_task_state state = TASKER_TASK_PENDING;
    int rc = tasker_task_wait(&state, coord, uuid, TASK_TIMEOUT_MS);
    if (rc == TASKER_ETIMEOUT) {
        fprintf(stderr, "order_fulfillment: the task did not finish within %d ms\n",
                TASK_TIMEOUT_MS);
    } else {
        die_on(rc, "tasker_task_wait");
    }

    char *json = NULL;
    die_on(tasker_task_get(&json, coord, uuid), "tasker_task_get");
    print_report(json);
    tasker_free(json);

    die_on(tasker_coordinator_stop(coord, 1000), "tasker_coordinator_stop");
    die_on(tasker_coordinator_close(coord), "tasker_coordinator_close");

    if (state != TASKER_TASK_COMPLETE) {
        fprintf(stderr, "order_fulfillment: task ended %s, not complete\n",
                tasker_task_state_name(state));
        return EXIT_FAILURE;
    }
    return EXIT_SUCCESS;
}
