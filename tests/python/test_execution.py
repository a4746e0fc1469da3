"""How handlers run: async concurrency, sync/async mix, in-process objects, Step API."""

import asyncio
import threading
import time

import pytest

import tasker
from _pg import both_stores


@both_stores
def test_thousand_async_handlers_sleep_concurrently(app):
    state = {"now": 0, "peak": 0}

    @app.handler("io")
    async def io(step):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.5)
        state["now"] -= 1
        return step.context["i"]

    app.template("x/io@1", steps={"io": []})

    async def main():
        t0 = time.monotonic()
        results = await asyncio.gather(*(app.run("x/io", {"i": i}) for i in range(1000)))
        return results, time.monotonic() - t0

    results, elapsed = asyncio.run(main())
    assert [r["io"] for r in results] == list(range(1000))
    assert state["peak"] == 1000  # all were sleeping at once
    # Sequentially it would take 500 s.  On PostgreSQL each of the 1,000
    # task creations is a committed transaction of its own, which adds a few
    # seconds on a busy machine.
    assert elapsed < (5.0 if app.store == "memory" else 30.0)


@both_stores
def test_fan_out_of_async_steps_in_one_task(app):
    n = 300
    steps = {"root": []}
    steps.update({"io%d" % i: {"handler": "io", "depends_on": ["root"]} for i in range(n)})
    steps["sink"] = ["io%d" % i for i in range(n)]
    running = {"now": 0, "peak": 0}

    app.register_handler("root", lambda step: 2)

    @app.handler("io")
    async def io(step):
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        await asyncio.sleep(0.2)
        running["now"] -= 1
        return step.results["root"] * int(step.name[2:])

    @app.handler("sink")
    def sink(step):
        return sum(step.results[d] for d in step.dependencies)

    app.template("x/fan@1", steps=steps)
    res = app.run_sync("x/fan", timeout=60)
    assert res["sink"] == 2 * sum(range(n))
    assert running["peak"] == n


@both_stores
def test_sync_and_async_handlers_in_one_template(app):
    threads = {}

    @app.handler("load")
    def load(step):
        threads["load"] = threading.current_thread().name
        return [3, 1, 2]

    @app.handler("sort")
    async def sort_rows(step):
        threads["sort"] = threading.current_thread().name
        await asyncio.sleep(0.01)
        return sorted(step.results["load"])

    @app.handler("count")
    def count(step):
        return len(step.results["load"])

    @app.handler("report")
    async def report(step):
        return {"sorted": step.results["sort"], "n": step.results["count"]}

    app.template("x/mix@1", steps={"load": [], "sort": ["load"], "count": ["load"],
                                   "report": ["sort", "count"]})

    async def main():
        threads["loop"] = threading.current_thread().name
        return await app.run("x/mix")

    res = asyncio.run(main())
    assert res["report"] == {"sorted": [1, 2, 3], "n": 3}
    # Async handlers run on the caller's loop, sync ones on worker threads.
    assert threads["sort"] == threads["loop"]
    assert threads["load"] != threads["loop"]
    assert threads["load"].startswith("tasker-sync")


class Big:
    """Stands in for a DataFrame: large, and must never be copied."""

    def __init__(self, n):
        self.payload = bytearray(n)


def test_large_object_passed_without_copy(app):
    made = {}

    @app.handler("make")
    def make(step):
        made["obj"] = Big(64 * 1024 * 1024)
        return made["obj"]

    @app.handler("use_sync")
    def use_sync(step):
        return step.results["make"] is made["obj"]

    @app.handler("use_async")
    async def use_async(step):
        return id(step.results["make"])

    app.template("x/big@1", steps={"make": [], "use_sync": ["make"], "use_async": ["make"]})
    res = app.run_sync("x/big")
    assert res["use_sync"] is True
    assert res["use_async"] == id(made["obj"])
    assert res["make"] is made["obj"]


def test_object_results_freed_when_task_forgotten(app):
    import gc
    import weakref

    refs = []

    @app.handler("obj")
    def obj(step):
        b = Big(10)
        refs.append(weakref.ref(b))
        return b

    app.template("x/obj@1", steps={"obj": []})
    for _ in range(5):
        app.run_sync("x/obj")
    app.run_sync("x/obj")  # reaps the previous handles
    gc.collect()
    # Every task but possibly the last is forgotten, its result released.
    alive = sum(1 for r in refs if r() is not None)
    assert alive <= 1


@both_stores
def test_step_api(app):
    seen = {}

    @app.handler("first")
    def first(step):
        return {"v": 1}

    @app.handler("probe")
    async def probe(step):
        seen.update(
            name=step.name,
            handler=step.handler,
            uuid=step.uuid,
            task_uuid=step.task_uuid,
            namespace=step.namespace,
            template=step.template,
            attempt=step.attempt,
            max_attempts=step.max_attempts,
            context=step.context,
            deps=step.dependencies,
            results=dict(step.results),
            n=len(step.results),
            repr=repr(step),
        )

    app.template("x/api@1", steps={"first": [], "p": {"handler": "probe", "depends_on": ["first"],
                                                      "retry": {"max_attempts": 9}}})
    h = app.submit("x/api", {"customer": "ada", "n": [1, 2]})
    h.wait(timeout=10)
    assert seen["name"] == "p" and seen["handler"] == "probe"
    assert len(seen["uuid"]) == 36 and seen["uuid"] != h.uuid
    assert seen["task_uuid"] == h.uuid
    assert (seen["namespace"], seen["template"]) == ("x", "api")
    assert (seen["attempt"], seen["max_attempts"]) == (1, 9)
    assert seen["context"] == {"customer": "ada", "n": [1, 2]}
    assert seen["deps"] == ("first",)
    assert seen["results"] == {"first": {"v": 1}} and seen["n"] == 1
    assert "p" in seen["repr"]


def test_json_result_mode(json_app):
    app = json_app

    @app.handler("mk")
    def mk(step):
        return {"rows": [1, 2]}

    @app.handler("use")
    def use(step):
        return step.results["mk"]["rows"] + [3]

    @app.handler("bad")
    def bad(step):
        return object()

    app.template("x/json@1", steps={"mk": [], "use": ["mk"]})
    app.template("x/bad@1", steps={"bad": []})
    h = app.submit("x/json")
    assert h.get(timeout=10) == {"mk": {"rows": [1, 2]}, "use": [1, 2, 3]}
    steps = {s["name"]: s for s in h.steps}
    assert steps["mk"]["result_kind"] == "json"
    assert steps["mk"]["result"] == {"rows": [1, 2]}
    h = app.submit("x/bad")
    assert h.wait(timeout=10) == "error"
    assert "JSON" in h.errors()[0]["message"]


@both_stores
def test_many_tasks_on_private_loop_with_async_handlers(app):
    @app.handler("a")
    async def a(step):
        await asyncio.sleep(0)
        return step.context["i"] + 1

    app.template("x/a@1", steps={"a": []})
    handles = [app.submit("x/a", {"i": i}) for i in range(500)]
    assert [h.get(timeout=30)["a"] for h in handles] == [i + 1 for i in range(500)]


@both_stores
def test_loop_switching(app):
    """Two asyncio.run() calls in a row: the coordinator follows the loop."""

    @app.handler("s")
    async def s(step):
        await asyncio.sleep(0.001)
        return 1

    app.template("x/s@1", steps={"s": []})
    assert asyncio.run(app.run("x/s")) == {"s": 1}
    assert asyncio.run(app.run("x/s")) == {"s": 1}
    assert app.run_sync("x/s") == {"s": 1}
    assert asyncio.run(app.run("x/s")) == {"s": 1}


@both_stores
def test_handler_decorator_forms(app):
    @app.handler
    def plain(step):
        return "plain"

    @app.handler()
    async def named_by_function(step):
        return "fn"

    app.template("x/deco@1", steps={"plain": [], "named_by_function": []})
    assert app.run_sync("x/deco") == {"plain": "plain", "named_by_function": "fn"}


def test_context_manager_and_version():
    with tasker.Coordinator() as app:
        assert not app.closed
        assert "memory" in repr(app)
    assert app.closed
    assert tasker.version() == "0.1.0"
    assert tasker.ABI_VERSION == tasker._lib.tasker_abi_version()
