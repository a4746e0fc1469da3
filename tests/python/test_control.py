"""Cancel, idempotency, manual retry and resolve, priorities."""

import asyncio
import threading

import pytest

import tasker
from _pg import both_stores


@both_stores
def test_cancel_running_async_task(app):
    started = asyncio.Event
    record = {}

    @app.handler("slow")
    async def slow(step):
        record["started"].set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            record["cancelled"] = True
            raise
        return "finished"  # pragma: no cover

    @app.handler("after")
    def after(step):  # pragma: no cover - must never run
        raise AssertionError("ran after cancel")

    app.template("c/slow@1", steps={"slow": [], "after": ["slow"]})

    async def main():
        record["started"] = started()
        h = app.submit("c/slow")
        await asyncio.wait_for(record["started"].wait(), 10)
        assert h.status() == "running"
        assert h.cancel() is True
        with pytest.raises(tasker.TaskCancelled) as ei:
            await h.get_async(timeout=10)
        assert ei.value.state == "cancelled"
        await asyncio.sleep(0.05)
        assert h.cancel() is False  # already final
        return h

    h = asyncio.run(main())
    assert record.get("cancelled") is True
    assert h.status() == "cancelled"
    states = {s["name"]: s["state"] for s in h.steps}
    assert states == {"slow": "cancelled", "after": "cancelled"}


@both_stores
def test_cancel_pending_sync_task(app):
    gate = threading.Event()

    @app.handler("gate")
    def gate_handler(step):
        gate.wait(30)
        return 1

    app.template("c/gate@1", steps={"gate": []})
    h = app.submit("c/gate")
    assert h.cancel() is True
    gate.set()
    assert h.wait(timeout=10) == "cancelled"
    with pytest.raises(tasker.TaskCancelled):
        h.get()


@both_stores
def test_idempotency_key_returns_same_task(app):
    runs = []

    @app.handler("once")
    def once(step):
        runs.append(step.task_uuid)
        return step.context["n"]

    app.template("c/once@1", steps={"once": []})
    a = app.submit("c/once", {"n": 1}, idempotency_key="order-42")
    b = app.submit("c/once", {"n": 2}, idempotency_key="order-42")
    assert a.uuid == b.uuid
    assert a.get(timeout=10) == {"once": 1}
    assert b.get(timeout=10) == {"once": 1}
    # After the first task finished (and its handles are gone) the key still
    # names it: keyed tasks are kept.
    uuid = a.uuid
    del a, b
    c = app.submit("c/once", {"n": 3}, idempotency_key="order-42")
    assert c.uuid == uuid
    assert c.wait(timeout=10) == "complete"
    assert app.run_sync("c/once", {"n": 4}, idempotency_key="other") == {"once": 4}
    assert len(runs) == 2


@both_stores
def test_idempotency_key_with_other_template_is_rejected(app):
    app.register_handler("x", lambda step: None)
    app.template("c/x@1", steps={"x": []})
    app.template("c/y@1", steps={"x": []})
    app.submit("c/x", idempotency_key="k").wait(timeout=10)
    with pytest.raises(tasker.AlreadyExists) as ei:
        app.submit("c/y", idempotency_key="k")
    assert ei.value.code == tasker._lib.TASKER_EEXIST


@both_stores
def test_manual_retry_and_resolve(app):
    fail = {"on": True}

    @app.handler("fragile")
    def fragile(step):
        if fail["on"]:
            raise tasker.PermanentError("down")
        return "up"

    @app.handler("next")
    def next_step(step):
        return "next saw %s" % step.results["fragile"]

    app.template("c/fragile@1", steps={"fragile": [], "next": ["fragile"]})
    h = app.submit("c/fragile")
    assert h.wait(timeout=10) == "error"
    fail["on"] = False
    h.retry()
    assert h.wait(timeout=10) == "complete"
    assert h.result == {"fragile": "up", "next": "next saw up"}

    fail["on"] = True
    h2 = app.submit("c/fragile")
    assert h2.wait(timeout=10) == "error"
    h2.resolve("fragile", "fixed by hand")
    assert h2.wait(timeout=10) in ("complete", "resolved_manually")
    assert h2.results["next"] == "next saw fixed by hand"


@both_stores
def test_task_handle_lookup_and_info(app):
    app.register_handler("id", lambda step: step.context)
    app.template("c/id@1", steps={"id": []})
    h = app.submit("c/id", {"a": 1}, priority=5)
    h.wait(timeout=10)
    again = app.task(h.uuid)
    assert again.status() == "complete"
    info = app.info(h.uuid)
    assert info["uuid"] == h.uuid
    assert info["priority"] == 5
    assert info["context"] == {"a": 1}
    assert info["namespace"] == "c" and info["name"] == "id" and info["version"] == "1"
    with pytest.raises(tasker.NotFound):
        app.info("00000000-0000-0000-0000-000000000000")


@both_stores
def test_await_handle_directly(app):
    @app.handler("sq")
    async def sq(step):
        await asyncio.sleep(0.01)
        return step.context["x"] ** 2

    app.template("c/sq@1", steps={"sq": []})

    async def main():
        handles = [app.submit("c/sq", {"x": x}) for x in range(10)]
        return [await h for h in handles]

    assert asyncio.run(main()) == [{"sq": x * x} for x in range(10)]


@both_stores
def test_run_timeout_raises_timeout(app):
    gate = threading.Event()

    @app.handler("wait")
    def wait_handler(step):
        gate.wait(30)

    app.template("c/wait@1", steps={"wait": []})
    try:
        with pytest.raises(tasker.Timeout):
            app.run_sync("c/wait", timeout=0.2)
        with pytest.raises(TimeoutError):
            asyncio.run(app.run("c/wait", timeout=0.2))
    finally:
        gate.set()


@both_stores
def test_blocking_wait_inside_loop_is_refused(app):
    app.register_handler("n", lambda step: None)
    app.template("c/n@1", steps={"n": []})

    async def main():
        h = app.submit("c/n")
        with pytest.raises(RuntimeError):
            h.wait()
        await h

    asyncio.run(main())


@both_stores
def test_run_sync_from_threads_while_loop_serves(app):
    """Sync waits from other threads while an asyncio loop serves the coordinator."""
    @app.handler("t")
    async def t(step):
        await asyncio.sleep(0.01)
        return step.context["i"]

    app.template("c/t@1", steps={"t": []})
    results = {}

    def worker(i):
        results[i] = app.run_sync("c/t", {"i": i}, timeout=20)

    async def main():
        await app.run("c/t", {"i": -1})  # the loop now serves the coordinator
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert results == {i: {"t": i} for i in range(4)}


def test_background_loop_runs_steps_without_waiting():
    import time

    app = tasker.Coordinator()
    threads = set()

    @app.handler("bg")
    async def bg(step):
        threads.add(threading.current_thread().name)
        await asyncio.sleep(0.01)
        return step.context["i"]

    app.template("c/bg@1", steps={"bg": []})
    app.start()
    app.start()  # idempotent
    try:
        handles = [app.submit("c/bg", {"i": i}) for i in range(20)]
        deadline = time.monotonic() + 10
        while not all(h.done() for h in handles) and time.monotonic() < deadline:
            time.sleep(0.01)  # nobody waits: the background loop runs them
        assert all(h.done() for h in handles)
        assert [h.result["bg"] for h in handles] == list(range(20))
        assert threads == {"tasker-loop"}
        assert app.run_sync("c/bg", {"i": 99}, timeout=10) == {"bg": 99}
        app.stop()
        # Served again by a private loop while waiting.
        assert app.run_sync("c/bg", {"i": 7}, timeout=10) == {"bg": 7}
        app.start()
    finally:
        app.close()
    assert app.closed
