"""Lifetimes: garbage collection with steps in flight, memory over many tasks, ABI."""

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import tasker
from tasker import _step


def _new_objects(before):
    """In-process results registered since `before` and still held."""
    return set(_step._objects) - before


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Payload:
    def __init__(self, i):
        self.data = list(range(20))
        self.i = i


def test_gc_of_coordinator_with_async_steps_in_flight():
    before = set(_step._objects)
    gate_started = []
    cancelled = []
    late = []

    async def main():
        app = tasker.Coordinator()
        ref = weakref.ref(app)

        @app.handler("slow")
        async def slow(step):
            gate_started.append(step.name)
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.append(step.name)
                # Touching the step after the coordinator closed is safe: the
                # handle is gone and says so.
                try:
                    step.attempt
                except tasker.StateError:
                    late.append(step.name)
                raise

        @app.handler("obj")
        def obj(step):
            return Payload(1)

        app.template("gc/a@1", steps={"obj": [], "slow": ["obj"],
                                      "s2": {"handler": "slow", "depends_on": ["obj"]}})
        handles = [app.submit("gc/a") for _ in range(20)]
        while len(gate_started) < 40:
            await asyncio.sleep(0.01)
        del handles, app, slow, obj
        gc.collect()
        # The coordinator is closed at the next turn of the loop.
        for _ in range(100):
            await asyncio.sleep(0.01)
            if ref() is None and len(cancelled) == 40:
                break
        return ref

    ref = asyncio.run(main())
    gc.collect()
    assert ref() is None
    assert len(cancelled) == 40
    assert len(late) == 40
    assert not _new_objects(before)  # every in-process result was released


def test_gc_of_coordinator_with_sync_steps_in_flight():
    before = set(_step._objects)
    gate = threading.Event()
    entered = threading.Semaphore(0)
    finished = []

    app = tasker.Coordinator(max_threads=4)
    ref = weakref.ref(app)

    def blocker(step):
        entered.release()
        gate.wait(30)
        # The coordinator is gone by now: reading the step is still safe.
        finished.append((step.name, step.attempt))
        return Payload(2)

    app.register_handler("blocker", blocker)
    app.template("gc/s@1", steps={"blocker": []})
    handles = [app.submit("gc/s") for _ in range(3)]
    # Drive the private loop briefly so the steps are claimed and running.
    with pytest.raises(tasker.Timeout):
        handles[0].wait(timeout=0.5)
    for _ in range(3):
        assert entered.acquire(timeout=10)
    del handles, app
    gc.collect()
    assert ref() is None
    gate.set()
    deadline = time.monotonic() + 10
    while len(finished) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(finished) == [("blocker", 1)] * 3
    time.sleep(0.1)
    gc.collect()
    assert not _new_objects(before)


def test_explicit_close_with_steps_in_flight():
    async def main():
        app = tasker.Coordinator()

        @app.handler("wait")
        async def wait(step):
            await asyncio.sleep(10)

        app.template("gc/c@1", steps={"wait": []})
        h = app.submit("gc/c")
        await asyncio.sleep(0.05)
        app.close()
        with pytest.raises(tasker.Closed):
            await h.get_async(timeout=5)
        with pytest.raises(tasker.Closed):
            h.status()

    asyncio.run(main())


def test_rss_flat_over_many_tasks():
    """100,000 tasks (two steps each, object results): memory stays flat."""
    before = set(_step._objects)
    app = tasker.Coordinator()

    @app.handler("make")
    def make(step):
        return Payload(step.context["i"])

    @app.handler("use")
    async def use(step):
        return step.results["make"].i

    app.template("mem/t@1", steps={"make": [], "use": ["make"]})

    async def batch(start, n):
        handles = [app.submit("mem/t", {"i": start + i}) for i in range(n)]
        for i, h in enumerate(handles):
            res = await h
            assert res["use"] == start + i

    async def main():
        chunk = 2000
        await batch(0, 20000)  # warm-up: allocator pools, dict sizes
        gc.collect()
        base = _rss_bytes()
        for start in range(20000, 100000, chunk):
            await batch(start, chunk)
        gc.collect()
        return base, _rss_bytes()

    base, end = asyncio.run(main())
    growth = end - base
    assert growth < 16 * 1024 * 1024, "RSS grew by %.1f MiB" % (growth / 2**20)
    # No task records or result objects pile up: records of tasks whose
    # handles are gone are dropped at the coordinator's next activity.
    assert app.run_sync("mem/t", {"i": 7})["use"] == 7
    assert len(app._core.recs) < 10
    app.close()
    gc.collect()
    assert not _new_objects(before)


def test_abi_mismatch_message(monkeypatch):
    from tasker import _ffi

    monkeypatch.setattr(_ffi, "BINDING_ABI", _ffi.BINDING_ABI + 1)
    with pytest.raises(ImportError) as ei:
        _ffi._abi_check()
    msg = str(ei.value)
    assert str(_ffi.BINDING_ABI) in msg and str(_ffi.BINDING_ABI - 1) in msg
    assert "pip install" in msg


def test_library_abi_check_rejects_other_version():
    from tasker import _ffi

    rc = _ffi.lib.tasker_abi_check(_ffi.lib.TASKER_ABI_VERSION + 1)
    assert rc == _ffi.lib.TASKER_EVERSION
    err = _ffi.error_from_last(rc)
    assert isinstance(err, tasker.VersionMismatch)


def test_import_from_any_directory(tmp_path):
    code = "import tasker, os; print(tasker.version(), os.getcwd())"
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == tasker.version()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_close_from_inside_a_handler(kind):
    before = set(_step._objects)
    app = tasker.Coordinator()
    if kind == "sync":
        @app.handler("closer")
        def closer(step):
            app.close()
            return "late"
    else:
        @app.handler("closer")
        async def closer(step):
            app.close()
            await asyncio.sleep(0)
            return "late"  # pragma: no cover - cancelled by the close

    app.register_handler("never", lambda step: "never")
    app.template("gc/closer@1", steps={"closer": [], "never": ["closer"]})
    with pytest.raises(tasker.Closed):
        app.run_sync("gc/closer", timeout=10)
    assert app.closed
    # The sync handler may still be returning on its worker thread; its
    # result is released by the library's ECLOSED path.
    deadline = time.monotonic() + 30
    while _new_objects(before) and time.monotonic() < deadline:
        time.sleep(0.01)
        gc.collect()
    assert not _new_objects(before)
