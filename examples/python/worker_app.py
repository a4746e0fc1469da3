"""An app for `python -m tasker worker`, and a producer that feeds it.

The module declares handlers and a template on a plain `tasker.Coordinator()`;
the worker serves them on PostgreSQL:

    tasker migrate --database-url "$URL"                      # once
    python -m tasker worker --database-url "$URL" --app worker_app:app &
    python -m tasker worker --database-url "$URL" --app worker_app:app &   # as many as you like
    python worker_app.py --database-url "$URL" --orders 20    # submit and wait

Run the commands from this directory (the worker imports `worker_app` from
the current directory).  Each order runs validate -> (reserve || charge) ->
ship; `charge` fails its first attempt to show a retry, and every step says
which worker process ran it.
"""

import argparse
import asyncio
import os
import sys

import tasker

app = tasker.Coordinator()


@app.handler("validate")
def validate(step):
    items = step.context["items"]
    if not items:
        raise tasker.PermanentError("an order needs at least one item")
    return {"quantity": sum(i["qty"] for i in items), "pid": os.getpid()}


@app.handler("reserve")
def reserve(step):
    return {"reserved": step.results["validate"]["quantity"], "pid": os.getpid()}


@app.handler("charge")
async def charge(step):
    await asyncio.sleep(0.01)  # the payment provider's round trip
    if step.attempt == 1:
        raise tasker.RetryableError("payment provider busy", retry_after=0.2)
    cents = step.context["cents"]
    return {"charged": cents, "attempt": step.attempt, "pid": os.getpid()}


@app.handler("ship")
def ship(step):
    r, c = step.results["reserve"], step.results["charge"]
    return {
        "tracking": "TRK-%d-%d" % (step.context["order"], r["reserved"]),
        "charged": c["charged"],
        "pid": os.getpid(),
    }


ORDER = app.template(
    "shop/order@1",
    steps={
        "validate": [],
        "reserve": ["validate"],
        "charge": {"depends_on": ["validate"], "retry": {"max_attempts": 3}},
        "ship": ["reserve", "charge"],
    },
)


def produce(url, orders):
    """Submits `orders` tasks and waits for the workers to finish them."""
    with tasker.Coordinator(database_url=url) as producer:
        # Registering is idempotent; it lets the producer submit before any
        # worker has started.
        producer.template(ORDER.to_dict())
        handles = [
            producer.submit(
                "shop/order",
                {"order": 1000 + i, "cents": 250 * (i + 1), "items": [{"sku": "A", "qty": i + 1}]},
            )
            for i in range(orders)
        ]
        producer.wait_all(handles, timeout=120)
        workers = set()
        for h in handles:
            result = h.result
            workers.update(result[s]["pid"] for s in result)
            print(h.uuid, result["ship"]["tracking"], "charged", result["ship"]["charged"])
        print("%d orders shipped by %d worker process(es)" % (len(handles), len(workers)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("TASKER_DATABASE_URL"))
    parser.add_argument("--orders", type=int, default=10)
    args = parser.parse_args()
    if not args.database_url:
        sys.exit("pass --database-url URL or set TASKER_DATABASE_URL")
    produce(args.database_url, args.orders)
