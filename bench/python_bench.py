#!/usr/bin/env python3
"""Throughput of tasker's Python binding on diamond-10 tasks, with baselines.

diamond-10 = 1 root -> 8 parallel steps -> 1 sink; 1,000 tasks; no-op
handlers (each returns None), so the figures measure the orchestration cost
per step.  Each figure is the wall time from the first task submitted to the
last task seen final (task creation included), on a fresh coordinator, as the
median of several repeats.

Lines (one JSON object each, DESIGN.md section 8):
  python.sync.diamond10              tasker, plain `def` handlers (thread pool)
  python.async.diamond10             tasker, `async def` handlers (event loop)
  python.baseline.asyncio.diamond10  the same DAG as plain asyncio: per task,
                                     await root; gather(8 mids); await sink
  python.baseline.dask.diamond10     the same DAG as one Dask graph run by the
                                     local threaded scheduler (skipped if Dask
                                     is not installed)
  ratio lines                        tasker throughput / baseline throughput

Usage: python3 bench/python_bench.py [--tasks N] [--repeats N] [--no-dask]
Environment: TASKER_BENCH_REPEATS (default 9).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

import tasker

WIDTH = 8
STEPS_PER_TASK = WIDTH + 2


def emit(bench: str, metric: str, value: float, unit: str, params: Dict[str, Any]) -> None:
    print(
        json.dumps(
            {"bench": bench, "metric": metric, "value": round(value, 4), "unit": unit,
             "params": params}
        ),
        flush=True,
    )


def note(msg: str) -> None:
    print("python_bench: %s" % msg, file=sys.stderr, flush=True)


def diamond_steps() -> Dict[str, Any]:
    steps: Dict[str, Any] = {"root": {"handler": "root"}}
    for i in range(WIDTH):
        steps["mid%d" % i] = {"handler": "mid", "depends_on": ["root"]}
    steps["sink"] = {"handler": "sink", "depends_on": ["mid%d" % i for i in range(WIDTH)]}
    return steps


# -- tasker --------------------------------------------------------------------


def run_tasker_sync(n_tasks: int) -> float:
    """Seconds for n_tasks diamond-10 tasks with sync handlers."""
    app = tasker.Coordinator()

    def noop(step: Any) -> None:
        return None

    for name in ("root", "mid", "sink"):
        app.register_handler(name, noop)
    tmpl = app.template("bench/diamond10@1", steps=diamond_steps())
    gc.collect()
    t0 = time.perf_counter()
    handles = [app.submit(tmpl) for _ in range(n_tasks)]
    states = app.wait_all(handles, timeout=300)
    elapsed = time.perf_counter() - t0
    bad = [s for s in states if s != "complete"]
    if bad:
        raise SystemExit("python_bench: %d sync tasks did not complete: %s" % (len(bad), bad[:3]))
    del handles
    app.close()
    return elapsed


def run_tasker_async(n_tasks: int) -> float:
    """Seconds for n_tasks diamond-10 tasks with async handlers."""
    app = tasker.Coordinator()

    async def noop(step: Any) -> None:
        return None

    for name in ("root", "mid", "sink"):
        app.register_handler(name, noop)
    tmpl = app.template("bench/diamond10@1", steps=diamond_steps())

    async def main() -> float:
        gc.collect()
        t0 = time.perf_counter()
        handles = [app.submit(tmpl) for _ in range(n_tasks)]
        states = await app.wait_all_async(handles, timeout=300)
        elapsed = time.perf_counter() - t0
        bad = [s for s in states if s != "complete"]
        if bad:
            raise SystemExit("python_bench: %d async tasks did not complete" % len(bad))
        return elapsed

    elapsed = asyncio.run(main())
    app.close()
    return elapsed


# -- baselines -------------------------------------------------------------------


def run_asyncio_baseline(n_tasks: int) -> float:
    """The same DAG in plain asyncio: no orchestration, no bookkeeping."""

    async def noop() -> None:
        return None

    async def one_task() -> None:
        await noop()
        await asyncio.gather(*(noop() for _ in range(WIDTH)))
        await noop()

    async def main() -> float:
        gc.collect()
        t0 = time.perf_counter()
        await asyncio.gather(*(one_task() for _ in range(n_tasks)))
        return time.perf_counter() - t0

    return asyncio.run(main())


def run_dask_baseline(n_tasks: int) -> float:
    """The same DAG as one Dask graph on the local threaded scheduler."""
    import dask.threaded

    def noop(*args: Any) -> None:
        return None

    gc.collect()
    t0 = time.perf_counter()
    graph: Dict[Any, Any] = {}
    sinks = []
    for t in range(n_tasks):
        root = ("root", t)
        graph[root] = (noop,)
        mids = []
        for i in range(WIDTH):
            key = ("mid", t, i)
            graph[key] = (noop, root)
            mids.append(key)
        sink = ("sink", t)
        graph[sink] = (noop, mids)
        sinks.append(sink)
    dask.threaded.get(graph, sinks)
    return time.perf_counter() - t0


# -- driver ------------------------------------------------------------------------


def measure(fn: Callable[[int], float], n_tasks: int, repeats: int) -> Dict[str, Any]:
    # Warm-up at full size: imports, the allocator's arenas, the thread pool's
    # first threads and the code paths all settle before anything is timed.
    fn(n_tasks)
    times = [fn(n_tasks) for _ in range(repeats)]
    steps = n_tasks * STEPS_PER_TASK
    med = statistics.median(times)
    return {
        "throughput": steps / med,
        "params": {
            "tasks": n_tasks,
            "steps_per_task": STEPS_PER_TASK,
            "steps": steps,
            "handler": None,
            "includes_task_creation": True,
            "stat": "median",
            "repeats": repeats,
            "median": round(steps / med, 1),
            "best": round(steps / min(times), 1),
            "median_wall_ms": round(med * 1e3, 3),
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=int(os.environ.get("TASKER_BENCH_REPEATS", "9")))
    ap.add_argument("--no-dask", action="store_true", help="skip the Dask baseline")
    args = ap.parse_args()
    n, reps = args.tasks, max(1, args.repeats)
    common = {"python": sys.version.split()[0], "tasker": tasker.version(), "cpus": os.cpu_count()}

    results = {}
    for bench, fn, handler in (
        ("python.sync.diamond10", run_tasker_sync, "noop def (thread pool)"),
        ("python.async.diamond10", run_tasker_async, "noop async def (event loop)"),
        ("python.baseline.asyncio.diamond10", run_asyncio_baseline, "noop async def, plain asyncio"),
    ):
        r = measure(fn, n, reps)
        r["params"].update(common, handler=handler)
        emit(bench, "throughput", r["throughput"], "steps/s", r["params"])
        results[bench] = r["throughput"]

    if not args.no_dask:
        try:
            import dask  # noqa: F401
        except ImportError:
            note("Dask is not installed (pip install dask): skipping the Dask baseline")
        else:
            import dask as _dask

            r = measure(run_dask_baseline, n, max(1, min(reps, 3)))
            r["params"].update(common, handler="noop function, dask.threaded.get",
                               dask=_dask.__version__)
            emit("python.baseline.dask.diamond10", "throughput", r["throughput"], "steps/s",
                 r["params"])
            results["python.baseline.dask.diamond10"] = r["throughput"]

    base = results["python.baseline.asyncio.diamond10"]
    emit("python.async.diamond10", "ratio_vs_asyncio", results["python.async.diamond10"] / base,
         "ratio", {"baseline": "python.baseline.asyncio.diamond10", "target": ">= 0.5"})
    emit("python.sync.diamond10", "ratio_vs_asyncio", results["python.sync.diamond10"] / base,
         "ratio", {"baseline": "python.baseline.asyncio.diamond10"})
    dask_tp = results.get("python.baseline.dask.diamond10")
    if dask_tp:
        for bench in ("python.sync.diamond10", "python.async.diamond10"):
            emit(bench, "ratio_vs_dask", results[bench] / dask_tp, "ratio",
                 {"baseline": "python.baseline.dask.diamond10", "target": ">= 10"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
