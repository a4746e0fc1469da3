#!/usr/bin/env python3
"""A small ETL pipeline on tasker: extract -> (transform || validate) -> load.

* extract   reads a CSV of orders (generated here, into a temporary directory)
            and returns the rows -- a Python list handed to the next steps
            as is, without serialising it;
* transform aggregates revenue per country (a plain `def`, run on tasker's
            worker threads);
* validate  checks every row (an `async def`, run on the event loop) and
            fails the task for good on bad data (tasker.PermanentError);
* load      writes the aggregates into SQLite.  While the pipeline runs,
            another connection holds the database locked for a moment, so
            load's first attempt meets a real "database is locked" error and
            asks to be retried 0.2 s later (tasker.RetryableError).

Run:  python3 examples/python/etl_pipeline.py        (exit status 0 on success)
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time

import tasker

app = tasker.Coordinator()


@app.handler("extract")
def extract(step: tasker.Step) -> list:
    with open(step.context["csv_path"], newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["quantity"] = int(row["quantity"])
        row["unit_price"] = float(row["unit_price"])
    return rows


@app.handler("transform")
def transform(step: tasker.Step) -> dict:
    revenue: dict = {}
    for row in step.results["extract"]:
        revenue[row["country"]] = revenue.get(row["country"], 0.0) + row["quantity"] * row["unit_price"]
    return {country: round(total, 2) for country, total in sorted(revenue.items())}


@app.handler("validate")
async def validate(step: tasker.Step) -> dict:
    rows = step.results["extract"]
    await asyncio.sleep(0)  # an async handler may await I/O here (e.g. a schema registry)
    bad = [r["order_id"] for r in rows if r["quantity"] <= 0 or r["unit_price"] < 0]
    if bad:
        raise tasker.PermanentError("%d invalid rows" % len(bad), context={"order_ids": bad[:20]})
    return {"rows": len(rows)}


@app.handler("load")
def load(step: tasker.Step) -> dict:
    revenue = step.results["transform"]
    checked = step.results["validate"]
    conn = sqlite3.connect(step.context["db_path"], timeout=0)  # fail fast when locked
    try:
        with conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS revenue (run TEXT, country TEXT, total REAL)"
            )
            conn.executemany(
                "INSERT INTO revenue VALUES (?, ?, ?)",
                [(step.task_uuid, country, total) for country, total in revenue.items()],
            )
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise tasker.RetryableError(
                "database busy (attempt %d)" % step.attempt, retry_after=0.2
            ) from exc
        raise
    finally:
        conn.close()
    return {"countries": len(revenue), "rows": checked["rows"], "attempt": step.attempt}


app.template(
    "etl/orders@1",
    steps={
        "extract": [],
        "transform": ["extract"],
        "validate": ["extract"],
        "load": {"depends_on": ["transform", "validate"],
                 "retry": {"max_attempts": 5, "backoff": "exponential", "base_ms": 100}},
    },
)


def make_orders(path: str, n: int = 5000) -> None:
    rng = random.Random(7)
    countries = ["DE", "FR", "JP", "US", "BR"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "country", "quantity", "unit_price"])
        for i in range(n):
            w.writerow([i, rng.choice(countries), rng.randint(1, 5), round(rng.uniform(1, 100), 2)])


def hold_lock(db_path: str, locked: threading.Event, seconds: float) -> None:
    """Another writer: keeps the database exclusively locked for a while."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    locked.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


async def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = os.path.join(tmp, "orders.csv")
        db_path = os.path.join(tmp, "warehouse.db")
        make_orders(csv_path)
        sqlite3.connect(db_path).close()

        locked = threading.Event()
        locker = threading.Thread(target=hold_lock, args=(db_path, locked, 0.3))
        locker.start()
        locked.wait()

        t0 = time.perf_counter()
        handle = app.submit("etl/orders", {"csv_path": csv_path, "db_path": db_path})
        results = await handle
        elapsed = time.perf_counter() - t0
        locker.join()

        print("revenue by country:", results["transform"])
        print("validated rows:    ", results["validate"]["rows"])
        print("load:              ", results["load"])
        for step in handle.steps:
            errors = ", ".join("attempt %d: %s" % (e["attempt"], e["message"]) for e in step["errors"])
            print("  %-9s %-9s attempts=%d %s" % (step["name"], step["state"], step["attempts"], errors))
        with sqlite3.connect(db_path) as conn:
            stored = conn.execute("SELECT COUNT(*) FROM revenue").fetchone()[0]
        print("rows in warehouse: %d; pipeline took %.0f ms" % (stored, elapsed * 1e3))
        ok = stored == len(results["transform"]) and results["load"]["attempt"] >= 2
        return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    finally:
        app.close()
