"""Events, metrics, health, status, circuits and the HTTP endpoint."""

import asyncio
import json
import threading
import time
import urllib.request

import pytest

import tasker
from _pg import both_stores


def _diamond(app):
    for name in ("a", "b", "c", "d"):
        app.register_handler(name, lambda step: step.name)
    return app.template("obs/diamond@1", steps={"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})


@both_stores
def test_subscribe_callback_sees_lifecycle(app):
    _diamond(app)
    seen = []
    lock = threading.Lock()

    def on_event(event):
        with lock:
            seen.append(event)

    sub = app.subscribe(on_event)
    h = app.submit("obs/diamond")
    assert h.wait(timeout=10) == "complete"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if any(e.type == "task_completed" for e in seen):
                break
        time.sleep(0.01)
    sub.close()
    mine = [e for e in seen if e.task_uuid == h.uuid]
    types = [e.type for e in mine]
    assert types[0] == "task_created" and types[-1] == "task_completed"
    assert types.count("step_succeeded") == 4
    assert types.count("step_started") == 4
    succeeded = [e.step for e in mine if e.type == "step_succeeded"]
    assert succeeded[0] == "a" and succeeded[-1] == "d"
    ev = next(e for e in mine if e.type == "step_succeeded")
    assert ev.namespace == "obs" and ev.template == "diamond" and ev.attempt == 1
    assert len(ev.step_uuid) == 36 and ev.handler == "a"
    assert abs(ev.at - time.time()) < 60
    assert sub.dropped == 0 and sub.delivered >= len(mine)
    assert sub.closed
    sub.close()  # idempotent


@both_stores
def test_event_filter_and_failures(app):
    @app.handler("bad")
    def bad(step):
        raise ValueError("nope %d" % step.attempt)

    app.template("obs/bad@1", steps={"bad": {"retry": {"max_attempts": 2, "backoff": "none"}}})
    seen = []
    with app.subscribe(seen.append, ["step_failed", "task_failed"]):
        h = app.submit("obs/bad")
        assert h.wait(timeout=10) == "error"
        deadline = time.monotonic() + 10
        while not any(e.type == "task_failed" for e in seen) and time.monotonic() < deadline:
            time.sleep(0.01)
    types = [e.type for e in seen]
    assert types == ["step_failed", "step_failed", "task_failed"]
    assert seen[0].error_class == "ValueError" and seen[0].error_message == "nope 1"
    assert seen[1].attempt == 2
    with pytest.raises(tasker.InvalidArgument):
        app.subscribe(print, ["no_such_event"])


@both_stores
def test_async_event_stream(app):
    _diamond(app)

    async def main():
        async with app.events(["task_completed"]) as stream:
            h = app.submit("obs/diamond")
            event = await stream.get(timeout=10)
            assert event.type == "task_completed" and event.task_uuid == h.uuid
            await h
        # A callback subscribed inside a loop runs on that loop.
        got = []
        loop_thread = threading.current_thread()

        async def acb(event):
            got.append((event.type, threading.current_thread() is loop_thread))

        sub = app.subscribe(acb, "task_completed")
        await app.run("obs/diamond")
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.01)
        sub.close()
        return got

    assert asyncio.run(main()) == [("task_completed", True)]


@both_stores
def test_metrics_health_status(app):
    _diamond(app)

    @app.handler("failing")
    def failing(step):
        raise tasker.PermanentError("broken")

    app.template("obs/failing@1", steps={"failing": []})
    app.run_sync("obs/diamond")
    with pytest.raises(tasker.TaskFailed):
        app.run_sync("obs/failing")
    text = app.metrics()
    assert "# TYPE" in text and "tasker_" in text
    health = app.health()
    assert health["status"] in ("ok", "degraded")
    assert health["store"]["kind"] == app.store
    status = app.status()
    assert "tasks" in status and "dead_letters" in status
    dead = [d for d in status["dead_letters"] if d["step"] == "failing"]
    assert dead and dead[0]["message"] == "broken"


@both_stores
def test_circuit_force_open_holds_steps(app):
    @app.handler("guarded")
    async def guarded(step):
        return "ran"

    app.template("obs/guarded@1", steps={"guarded": []})
    assert app.circuit("handler:guarded") == "closed"
    app.force_circuit("handler:guarded", "open")
    assert app.circuit("handler:guarded") == "open"

    async def main():
        h = app.submit("obs/guarded")
        await asyncio.sleep(0.3)
        assert not h.done()  # held while the circuit is open
        app.force_circuit("handler:guarded", "closed")
        return await h.get_async(timeout=10)

    assert asyncio.run(main()) == {"guarded": "ran"}
    app.force_circuit("handler:guarded", "auto")
    assert app.circuit("handler:guarded") == "closed"
    with pytest.raises(tasker.InvalidArgument):
        app.force_circuit("handler:guarded", "sideways")


@both_stores
def test_http_endpoint(app):
    _diamond(app)
    app.run_sync("obs/diamond")
    with app.serve_http(port=0) as server:
        assert server.port > 0
        with urllib.request.urlopen(server.url + "/health/live", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
            assert b"tasker_" in r.read()
        with urllib.request.urlopen(server.url + "/status.json", timeout=10) as r:
            assert "tasks" in json.loads(r.read())
    server.stop()  # idempotent


def test_close_stops_subscriptions_and_http():
    app = tasker.Coordinator()
    _diamond(app)
    seen = []
    sub = app.subscribe(seen.append)
    server = app.serve_http()
    app.run_sync("obs/diamond")
    app.close()
    assert sub.closed
    assert "stopped" in repr(server)
    assert any(e.type == "task_completed" for e in seen)
