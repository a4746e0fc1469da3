"""Retries, retry_after, permanent errors, and failures of handlers."""

import asyncio
import threading
import time

import pytest

import tasker
from _pg import both_stores

# Every test here runs on the memory store and on PostgreSQL (issue 4).
pytestmark = both_stores


def test_retry_after_is_honoured(app):
    attempts = []

    @app.handler("flaky")
    def flaky(step):
        attempts.append((step.attempt, time.monotonic()))
        if step.attempt < 3:
            raise tasker.RetryableError("rate limited", retry_after=0.15, context={"n": step.attempt})
        return "ok"

    app.template("f/retry@1", steps={"flaky": {"retry": {"max_attempts": 5, "backoff": "none"}}})
    h = app.submit("f/retry")
    assert h.get(timeout=30) == {"flaky": "ok"}
    assert [a for a, _ in attempts] == [1, 2, 3]
    gaps = [attempts[i + 1][1] - attempts[i][1] for i in range(2)]
    assert all(g >= 0.14 for g in gaps), gaps
    (step,) = h.steps
    assert step["attempts"] == 3 and step["state"] == "complete"
    errors = step["errors"]
    assert [e["attempt"] for e in errors] == [1, 2]
    assert errors[0]["class"] == "tasker.RetryableError"
    assert errors[0]["message"] == "rate limited"
    assert errors[0]["retryable"] is True
    assert errors[0]["context"]["n"] == 1
    assert "Traceback" in errors[0]["context"]["traceback"]


def test_async_retry_after(app):
    seen = []

    @app.handler("aflaky")
    async def aflaky(step):
        seen.append(time.monotonic())
        await asyncio.sleep(0)
        if step.attempt == 1:
            raise tasker.RetryableError("later", retry_after=0.1)
        return step.attempt

    app.template("f/aretry@1", steps={"aflaky": {"retry": {"max_attempts": 2, "base_ms": 5000}}})
    res = asyncio.run(app.run("f/aretry", timeout=30))
    assert res == {"aflaky": 2}
    # retry_after (100 ms) replaced the 5 s exponential backoff.
    assert 0.09 <= seen[1] - seen[0] < 3.0


def test_permanent_error_fails_task_without_retry(app):
    calls = []

    @app.handler("charge")
    def charge(step):
        calls.append(step.attempt)
        raise tasker.PermanentError("card declined", context={"code": "declined"})

    @app.handler("after")
    def after(step):  # pragma: no cover - must never run
        raise AssertionError("dependent of a failed step ran")

    app.template("f/perm@1", steps={"charge": [], "after": ["charge"]})
    h = app.submit("f/perm")
    with pytest.raises(tasker.TaskFailed) as ei:
        h.get(timeout=30)
    assert calls == [1]
    exc = ei.value
    assert exc.state == "error" and exc.task_uuid == h.uuid
    assert exc.errors[0]["step"] == "charge"
    err = exc.errors[0]["error"]
    assert err["class"] == "tasker.PermanentError"
    assert err["retryable"] is False
    assert err["context"]["code"] == "declined"
    assert "card declined" in str(exc)
    assert h.status() == "error"
    states = {s["name"]: s["state"] for s in h.steps}
    assert states["charge"] == "error" and states["after"] == "pending"


def test_any_exception_is_retryable_with_traceback(app):
    @app.handler("boom")
    def boom(step):
        raise KeyError("missing-column")

    app.template("f/boom@1", steps={"boom": {"retry": {"max_attempts": 3, "backoff": "none"}}})
    h = app.submit("f/boom")
    assert h.wait(timeout=30) == "error"
    errors = h.errors()
    assert len(errors) == 3
    for i, e in enumerate(errors, 1):
        assert e["attempt"] == i
        assert e["class"] == "KeyError"
        assert "missing-column" in e["message"]
        assert e["retryable"] is True
        assert "raise KeyError" in e["context"]["traceback"]
    with pytest.raises(tasker.TaskFailed) as ei:
        _ = h.result
    assert ei.value.errors[0]["attempts"] == 3


def test_custom_exception_class_name(app):
    class QuotaExceeded(Exception):
        pass

    @app.handler("q")
    async def q(step):
        raise QuotaExceeded("over quota")

    app.template("f/q@1", steps={"q": {"retry": {"max_attempts": 1}}})
    h = app.submit("f/q")
    assert h.wait(timeout=30) == "error"
    (err,) = h.errors()
    assert err["class"].endswith("QuotaExceeded")
    assert err["message"] == "over quota"


def test_failure_isolated_to_its_task(app):
    @app.handler("maybe")
    def maybe(step):
        if step.context["fail"]:
            raise tasker.PermanentError("no")
        return step.context["i"]

    app.template("f/iso@1", steps={"maybe": []})
    handles = [app.submit("f/iso", {"fail": i % 3 == 0, "i": i}) for i in range(30)]
    for i, h in enumerate(handles):
        assert h.wait(timeout=30) == ("error" if i % 3 == 0 else "complete")
        if i % 3:
            assert h.result == {"maybe": i}


def test_handler_that_raises_baseexception_does_not_kill_workers(app):
    @app.handler("exits")
    def exits(step):
        raise SystemExit(3)

    @app.handler("fine")
    def fine(step):
        return 1

    app.template("f/exit@1", steps={"exits": {"retry": {"max_attempts": 1}}})
    app.template("f/fine@1", steps={"fine": []})
    assert app.submit("f/exit").wait(timeout=30) == "error"
    assert app.run_sync("f/fine", timeout=30) == {"fine": 1}


def test_blocking_sync_handler_does_not_stall_others(app):
    gate = threading.Event()

    @app.handler("block")
    def block(step):
        gate.wait(30)
        return "unblocked"

    @app.handler("quick")
    def quick(step):
        return step.context["i"]

    app.template("f/block@1", steps={"block": []})
    app.template("f/quick@1", steps={"quick": []})
    blocked = [app.submit("f/block") for _ in range(3)]
    quick = [app.submit("f/quick", {"i": i}) for i in range(50)]
    t0 = time.monotonic()
    for i, h in enumerate(quick):
        assert h.get(timeout=20) == {"quick": i}
    assert time.monotonic() - t0 < 10
    assert all(not h.done() for h in blocked)
    gate.set()
    for h in blocked:
        assert h.get(timeout=20) == {"block": "unblocked"}


def test_async_handler_blocking_call_does_not_break_coordinator(app):
    """An async handler that raises synchronously (before any await)."""

    @app.handler("early")
    async def early(step):
        raise ValueError("before the first await")

    app.template("f/early@1", steps={"early": {"retry": {"max_attempts": 2, "backoff": "none"}}})
    h = app.submit("f/early")
    assert h.wait(timeout=30) == "error"
    assert [e["class"] for e in h.errors()] == ["ValueError", "ValueError"]


def test_sync_handler_returning_coroutine_is_reported(app):
    async def inner(step):
        return 1

    @app.handler("wrong")
    def wrong(step):
        return inner(step)

    app.template("f/wrong@1", steps={"wrong": []})
    h = app.submit("f/wrong")
    assert h.wait(timeout=30) == "error"
    assert "async def" in h.errors()[0]["message"]
