#!/usr/bin/env python3
"""Async fan-out: one task, 1,000 I/O-bound steps in flight at once.

plan -> fetch_000 .. fetch_999 -> total

Each fetch step opens a TCP connection to a small price service (started
here on 127.0.0.1) that answers after 50 ms, as a remote API would.  The
fetch handler is an `async def`: tasker runs all 1,000 on one event loop
concurrently, so the task takes about as long as the slowest few requests,
not 1,000 x 50 ms = 50 s.

Run:  python3 examples/python/fanout_async.py [N]     (exit status 0 on success)
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time

import tasker

LATENCY = 0.05

app = tasker.Coordinator()
stats = {"in_flight": 0, "peak": 0}


async def price_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    item = int((await reader.readline()).decode())
    await asyncio.sleep(LATENCY)  # a slow backend
    writer.write(b"%d\n" % (item * 3 + 1))  # the "price" of the item
    await writer.drain()
    writer.close()


@app.handler("plan")
def plan(step: tasker.Step) -> dict:
    return {"port": step.context["port"], "currency": "EUR"}


@app.handler("fetch")
async def fetch(step: tasker.Step) -> int:
    port = step.results["plan"]["port"]
    item = int(step.name.split("_")[1])
    async with connection_slots:
        stats["in_flight"] += 1
        stats["peak"] = max(stats["peak"], stats["in_flight"])
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"%d\n" % item)
            await writer.drain()
            price = int((await reader.readline()).decode())
            writer.close()
            await writer.wait_closed()
        except OSError as exc:
            raise tasker.RetryableError("price service: %s" % exc, retry_after=0.1) from exc
        finally:
            stats["in_flight"] -= 1
    return price


@app.handler("total")
def total(step: tasker.Step) -> dict:
    prices = [step.results[name] for name in step.dependencies]
    return {"items": len(prices), "sum": sum(prices)}


def connection_limit(wanted: int) -> int:
    """How many connections may be open at once with this process's file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, 2 * wanted + 256))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    # Each request holds a client and a server socket.
    return max(16, min(wanted, (soft - 128) // 2))


async def main(n: int) -> int:
    global connection_slots
    connection_slots = asyncio.Semaphore(connection_limit(n))
    server = await asyncio.start_server(price_service, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]

    steps = {"plan": []}
    for i in range(n):
        steps["fetch_%03d" % i] = {"handler": "fetch", "depends_on": ["plan"]}
    steps["total"] = ["fetch_%03d" % i for i in range(n)]
    app.template("shop/prices@1", steps=steps)

    t0 = time.perf_counter()
    results = await app.run("shop/prices", {"port": port}, timeout=120)
    elapsed = time.perf_counter() - t0
    server.close()
    await server.wait_closed()

    expected = sum(i * 3 + 1 for i in range(n))
    print("fetched %d prices, sum %d (expected %d)" % (results["total"]["items"],
                                                      results["total"]["sum"], expected))
    print("%d requests of %.0f ms each took %.2f s (sequentially: %.0f s); peak in flight: %d"
          % (n, LATENCY * 1e3, elapsed, n * LATENCY, stats["peak"]))
    ok = results["total"]["sum"] == expected and elapsed < n * LATENCY / 5
    return 0 if ok else 1


connection_slots: asyncio.Semaphore

if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    try:
        sys.exit(asyncio.run(main(count)))
    finally:
        app.close()
