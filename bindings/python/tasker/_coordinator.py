"""Coordinator, task handles, and the machinery that runs Python handlers.

How steps run
-------------
Every Python handler is registered with the C library without a callback
(poll mode), so no C thread ever calls into Python to run a step.  A
*driver* bound to an asyncio event loop watches the coordinator's file
descriptor (``loop.add_reader``); when it becomes readable the driver claims
ready steps in batches and dispatches them:

* ``async def`` handlers are started on the loop at once.  The coroutine is
  driven eagerly (``coro.send(None)``): a handler that finishes without
  suspending never becomes an asyncio Task, and its completion joins the
  batch.  One that suspends is wrapped in a Task that resumes it where it
  stopped.
* plain ``def`` handlers go to a thread pool in batches: a worker thread runs
  many handlers and completes them with one C call, so the loop never blocks
  and the per-step cost stays small.  A handler that blocks stalls only its
  own worker; a watchdog on the loop adds workers when the queue stops moving.

``await app.run(...)`` runs the driver on the caller's loop; ``run_sync`` and
``TaskHandle.wait`` run it on a private loop when no loop serves the
coordinator.

Locking and lifetime
--------------------
``_Core`` owns the C coordinator.  Every C call that takes the coordinator
pointer, and every step completion, happens under ``_Core.lock``, and closing
the coordinator takes the same lock, so no call can race the close.  User code
never runs under the lock.  A Coordinator that is garbage-collected is closed
at the next safe point (never inside a C call); steps still in flight then
keep their handles (the library's contract) and are released when they
complete.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import os
import threading
import time
import traceback
import types
import weakref
from typing import (
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Generator,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from . import _errors
from ._errors import Closed, InvalidArgument, StateError, StepError, TaskCancelled, TaskFailed
from ._ffi import NULL, check, error_from_last, ffi, lib
from ._step import FREE_PTR, Step, _graveyard, clear_graveyard, store_object
from ._templates import Template, build_template, parse_ref, template_from_doc
from ._observe import EventStream, HttpServer, Subscription, event_mask, in_event_callback

__all__ = ["Coordinator", "TaskHandle"]

F = TypeVar("F", bound=Callable[..., Any])

_get_running_loop = asyncio._get_running_loop
_string = ffi.string

# How many steps one claim asks for, and how many one wake-up of the driver
# processes before yielding to other callbacks on the loop.
CLAIM_BATCH = 256
MAX_PER_WAKE = 4096
# Completions a pool worker gathers before completing them in one C call, and
# the longest it holds a completion back (seconds).
SYNC_FLUSH_COUNT = 128
SYNC_FLUSH_AGE = 0.002
# A sync handler that once took longer than this is "slow": completions are
# flushed before calling it, so a blocking handler never holds others back.
SLOW_HANDLER = 0.001
# Watchdog period for stuck pool workers, and the period at which tasks being
# waited for are re-read from the library (catches changes the binding does
# not see itself: timeouts, other processes, operators).
POOL_CHECK_PERIOD = 0.02
WATCH_PERIOD = 0.2

TASK_FINAL_STATES = ("complete", "error", "cancelled", "resolved_manually")

_STATE_NAMES = {}
for _i in range(6):
    _p = lib.tasker_task_state_name(_i)
    if _p != NULL:
        _STATE_NAMES[_i] = ffi.string(_p).decode()

_OK = lib.TASKER_OK
_ETIMEOUT = lib.TASKER_ETIMEOUT
_ENOTFOUND = lib.TASKER_ENOTFOUND
_EBUSY = lib.TASKER_EBUSY
_ESTATE = lib.TASKER_ESTATE
_ENOTSUP = lib.TASKER_ENOTSUP

_CoroutineType = types.CoroutineType


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)
    return call is not None and inspect.iscoroutinefunction(call)


def _error_class_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__ or ""
    if module == "builtins":
        return cls.__qualname__
    if module.startswith("tasker."):
        module = "tasker"
    elif module.startswith("asyncio."):
        module = "asyncio"
    return "%s.%s" % (module, cls.__qualname__)


def _failure_fields(exc: BaseException) -> Tuple[bytes, bytes, int, int, bytes]:
    """(class, message, retryable, retry_after_ms, context JSON) for a failure."""
    if isinstance(exc, StepError):
        retryable = 1 if exc.retryable else 0
        retry_after = getattr(exc, "retry_after", None)
        retry_after_ms = -1 if retry_after is None else int(round(retry_after * 1000.0))
        context: Dict[str, Any] = dict(exc.context)
        message = exc.message or str(exc)
    else:
        retryable = 1
        retry_after_ms = -1
        context = {}
        message = str(exc)
    name = _error_class_name(exc)
    context.setdefault("exception", {"type": name, "repr": repr(exc)[:2000]})
    context.setdefault(
        "traceback", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    try:
        ctx = json.dumps(context, default=repr)
    except (TypeError, ValueError):
        ctx = json.dumps({"exception": {"type": name}})
    return (
        name.encode("utf-8", "replace"),
        message.encode("utf-8", "replace"),
        retryable,
        retry_after_ms,
        ctx.encode("utf-8", "replace"),
    )


def _set_future(fut: "asyncio.Future[Any]", value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_futures(items: List[Tuple["asyncio.Future[Any]", Any]]) -> None:
    for fut, value in items:
        if not fut.done():
            fut.set_result(value)


class _TaskRec:
    """What the binding tracks for one task: counts, results, waiters."""

    __slots__ = (
        "uuid",
        "uuid_b",
        "remaining",
        "state",
        "outcomes",
        "waiters",
        "event",
        "handles",
        "suspect",
        "context",
        "own",
        "keep",
        "forget_pending",
        "tasks",
    )

    def __init__(self, uuid: str, n_steps: int, own: bool, keep: bool) -> None:
        self.uuid = uuid
        self.uuid_b = uuid.encode("ascii")
        # Steps not yet completed successfully; -1 when the step count is
        # unknown (the library's state is then read after each completion).
        self.remaining = n_steps
        self.state: Optional[str] = None  # set once the task is final
        self.outcomes: List[Tuple[str, Any]] = []
        self.waiters: List["asyncio.Future[Any]"] = []
        self.event: Optional[threading.Event] = None
        self.handles = 0
        # Something happened that counting cannot account for (a step failed
        # for good, a completion was refused, an operator acted): read the
        # task's state from the library after each completion.
        self.suspect = n_steps < 0
        self.context: Optional[Dict[str, Any]] = None
        self.own = own
        self.keep = keep
        self.forget_pending = False
        # asyncio Tasks running suspended handlers of this task -> their Step.
        self.tasks: Dict["asyncio.Task[Any]", Step] = {}


@types.coroutine
def _resume(coro: Any, yielded: Any) -> Generator[Any, Any, Any]:
    """Continues a coroutine that was already started with send(None).

    `yielded` is what its first send() produced (usually the future it waits
    on); it is passed up to the Task, and whatever the Task sends or throws
    back goes into the coroutine, exactly as ``await`` would have done.
    """
    send = coro.send
    throw = coro.throw
    while True:
        try:
            value = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = send(value)
            except StopIteration as stop:
                return stop.value


async def _finish_async(core: "_Core", step: Step, coro: Any, yielded: Any) -> None:
    try:
        value = await _resume(coro, yielded)
    except BaseException as exc:
        core.fail_step(step, exc)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
    else:
        core.complete_one(step, value)
    finally:
        task = asyncio.current_task()
        if task is not None:
            step._rec.tasks.pop(task, None)


class _SyncPool:
    """Worker threads that run sync handlers in batches."""

    def __init__(self, core: "_Core", max_threads: int) -> None:
        self.core = core
        self.max_threads = max_threads
        self.items: Deque[Step] = collections.deque()
        self.wake: "collections.deque[Any]" = collections.deque()
        self.cond = threading.Condition(threading.Lock())
        self.threads: List[threading.Thread] = []
        self.idle = 0
        self.draining = 0
        self.pops = 0
        self.last_pops = -1
        self.stopping = False
        self.slow: Set[Any] = set()
        self.check_handle: Optional[asyncio.TimerHandle] = None

    def push(self, batch: List[Step], loop: Any) -> None:
        self.items.extend(batch)
        with self.cond:
            if self.draining == 0:
                self._add_drainers(1)
        if self.check_handle is None:
            self.check_handle = loop.call_later(POOL_CHECK_PERIOD, self._check, loop)

    def _add_drainers(self, k: int) -> None:
        # Called with self.cond held.
        while k > 0 and self.idle > 0:
            self.idle -= 1
            self.draining += 1
            self.wake.append(True)
            self.cond.notify()
            k -= 1
        while k > 0 and len(self.threads) < self.max_threads and not self.stopping:
            self.draining += 1
            t = threading.Thread(
                target=self._worker, name="tasker-sync-%d" % len(self.threads), daemon=True
            )
            self.threads.append(t)
            t.start()
            k -= 1

    def _check(self, loop: Any) -> None:
        """Watchdog: adds workers when queued steps stop moving."""
        self.check_handle = None
        if self.stopping:
            return
        if self.items:
            if self.pops == self.last_pops:
                with self.cond:
                    # Every draining worker is stuck in a handler: double them.
                    self._add_drainers(max(1, self.draining))
            self.last_pops = self.pops
        if self.items or self.draining:
            self.check_handle = loop.call_later(POOL_CHECK_PERIOD, self._check, loop)

    def _worker(self) -> None:
        while True:
            self._drain()
            with self.cond:
                if self.items and not self.stopping:
                    continue  # more arrived while finishing: keep draining
                self.draining -= 1
                self.idle += 1
                while not self.wake and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    self.idle -= 1
                    return
                self.wake.popleft()

    def _drain(self) -> None:
        popleft = self.items.popleft
        complete_ok = self.core.complete_ok
        slow = self.slow
        perf = time.perf_counter
        done: List[Tuple[Step, Any]] = []
        first = 0.0
        while True:
            try:
                step = popleft()
            except IndexError:
                break
            self.pops += 1
            fn = step._fn
            t0 = perf()
            if done and (fn in slow or t0 - first > SYNC_FLUSH_AGE):
                # Hand finished steps back before a handler that may block.
                complete_ok(done)
                done = []
            try:
                value = fn(step)
            except BaseException as exc:  # a handler must never kill its worker
                self.core.fail_step(step, exc)
                continue
            t1 = perf()
            # A handler is "slow" while its last call was; one preempted call
            # of a fast handler is forgotten at its next fast call.
            if t1 - t0 > SLOW_HANDLER:
                slow.add(fn)
            elif fn in slow:
                slow.discard(fn)
            if value is not None and value.__class__ is _CoroutineType:
                value.close()
                self.core.fail_step(
                    step,
                    _errors.PermanentError(
                        "handler %r is a plain function that returned a coroutine; declare it "
                        "with `async def` so tasker runs it on the event loop" % step.handler
                    ),
                )
                continue
            if not done:
                first = t1
            done.append((step, value))
            if len(done) >= SYNC_FLUSH_COUNT:
                complete_ok(done)
                done = []
        if done:
            complete_ok(done)

    def take_queued(self) -> List[Step]:
        out = []
        while True:
            try:
                out.append(self.items.popleft())
            except IndexError:
                return out

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.check_handle is not None:
            self.check_handle.cancel()
            self.check_handle = None


class _Driver:
    """Serves the coordinator's poll-mode descriptor on one event loop."""

    def __init__(self, core: "_Core", loop: asyncio.AbstractEventLoop) -> None:
        self.core = core
        self.loop = loop
        self.steps = ffi.new("tasker_step *[]", CLAIM_BATCH)
        self.text = ffi.new("char[]", CLAIM_BATCH * lib.TPY_CLAIM_TEXT_PER_STEP)
        # Steps one claim call takes (at most CLAIM_BATCH, what the buffers
        # hold) and one wake-up takes before yielding to other callbacks;
        # `python -m tasker worker` lowers both to the room it has left.
        self.claim_batch = CLAIM_BATCH
        self.max_per_wake = MAX_PER_WAKE
        self.text_len = ffi.new("size_t *")
        self.rcp = ffi.new("int *")
        self.attached = False
        self.watch_handle: Optional[asyncio.TimerHandle] = None
        self.pending_call = False

    def attach(self) -> None:
        self.loop.add_reader(self.core.fd, self.on_readable)
        self.attached = True
        # Steps may already be ready (tasks submitted before the loop ran).
        self.loop.call_soon(self.on_readable)

    def detach(self) -> None:
        if self.attached:
            self.attached = False
            if not self.loop.is_closed():
                self.loop.remove_reader(self.core.fd)
        if self.watch_handle is not None:
            self.watch_handle.cancel()
            self.watch_handle = None
        pool = self.core.pool
        if pool is not None and pool.check_handle is not None:
            pool.check_handle.cancel()
            pool.check_handle = None

    def start_watch(self) -> None:
        if self.watch_handle is None and self.attached:
            self.watch_handle = self.loop.call_later(WATCH_PERIOD, self._watch)

    def _watch(self) -> None:
        self.watch_handle = None
        core = self.core
        if not self.attached or core.closed:
            return
        if core.watched:
            core.refresh_watched()
        if core.watched:
            self.watch_handle = self.loop.call_later(WATCH_PERIOD, self._watch)

    def on_readable(self) -> None:
        core = self.core
        if not self.attached:
            return
        handlers = core.handlers
        recs = core.recs
        steps = self.steps
        text = self.text
        text_len = self.text_len
        rcp = self.rcp
        unpack = ffi.unpack
        claim = lib.tpy_claim
        create_task = self.loop.create_task
        batch = self.claim_batch
        max_per_wake = self.max_per_wake
        total = 0
        loop = self.loop
        while True:
            # The claim runs without the lock: the coordinator is only ever
            # closed on this loop's thread while the loop runs (see
            # _Core.close), so it cannot be closed under us.  A claimed step
            # pins its task (it cannot be forgotten while held); a task whose
            # record submit() has not stored yet is resolved by foreign_rec(),
            # which waits for submit's lock.
            ptr = core.ptr
            if ptr is None:
                self.detach()
                return
            if core.released:
                core.lock.acquire()
                try:
                    core.reap()
                finally:
                    core.unlock()
            n = claim(steps, text, text_len, rcp, ptr, batch)
            if rcp[0] != _OK:
                self.claim_failed(error_from_last(rcp[0]))
                return
            if not n:
                return
            sync_batch: List[Step] = []
            done: List[Tuple[Step, Any]] = []
            rec = None
            fn = None
            is_async = False
            # "task\0step\0handler\0" per step, decoded in one go; an empty
            # task or handler means "same as the previous step's".
            fields = iter(unpack(text, text_len[0]).decode("utf-8").split("\0"))
            for c, tu, name, hn in zip(unpack(steps, n), fields, fields, fields):
                if tu:
                    rec = recs.get(tu)
                    if rec is None:
                        rec = core.foreign_rec(tu)
                if hn:
                    entry = handlers.get(hn)
                    if entry is None:
                        fn = None
                    else:
                        fn, is_async = entry
                step = Step(c, rec, core, name)  # type: ignore[arg-type]
                if fn is None:
                    core.missing_handler.append(step)
                elif not is_async:
                    step._fn = fn
                    sync_batch.append(step)
                else:
                    # Drive the coroutine eagerly: most handlers finish
                    # without suspending and never need an asyncio Task.
                    try:
                        coro = fn(step)
                        yielded = coro.send(None)
                    except StopIteration as stop:
                        done.append((step, stop.value))
                    except BaseException as exc:
                        core.fail_step(step, exc)
                        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                            raise
                    else:
                        task = create_task(_finish_async(core, step, coro, yielded))
                        step._rec.tasks[task] = step
            if sync_batch:
                core.sync_pool().push(sync_batch, loop)
            if done:
                core.complete_ok(done)
            if core.missing_handler:
                core.fail_missing()
            total += n
            if n < batch:
                return
            if total >= max_per_wake:
                # Let other callbacks run; carry on right after them.
                loop.call_soon(self.on_readable)
                return

    def claim_failed(self, err: BaseException) -> None:
        """Reports a failed claim and backs off, so a persistent error does not spin."""
        self.core.report(err, "claiming steps")
        if self.attached and not self.loop.is_closed():
            self.loop.remove_reader(self.core.fd)

            def resume() -> None:
                if self.attached and not self.core.closed:
                    self.loop.add_reader(self.core.fd, self.on_readable)
                    self.on_readable()

            self.loop.call_later(0.1, resume)


class _Core:
    """Owns the C coordinator and everything that must outlive a Coordinator object."""

    def __init__(
        self,
        ptr: Any,
        result_mode: str,
        forget_finished: bool,
        max_threads: int,
    ) -> None:
        self.ptr = ptr
        self.lock = threading.Lock()
        self.handlers: Dict[str, Tuple[Callable[[Step], Any], bool]] = {}
        self.recs: Dict[str, _TaskRec] = {}
        self.step_counts: Dict[Tuple[str, str, str], int] = {}
        self.counts_by_name: Dict[Tuple[str, str], Set[int]] = {}
        self.released: Deque[_TaskRec] = collections.deque()
        self.watched: Set[_TaskRec] = set()
        self.missing_handler: List[Step] = []
        self.driver: Optional[_Driver] = None
        self.pool: Optional[_SyncPool] = None
        self.max_threads = max_threads
        self.private_loop: Optional[asyncio.AbstractEventLoop] = None
        self.drive_lock = threading.Lock()
        self.result_mode = result_mode
        self.forget_finished = forget_finished
        self.close_requested = False
        self.closed = False
        # (future, state) pairs to wake on other threads' loops, filled under
        # the lock and sent by unlock().
        self.wakes: List[Tuple["asyncio.Future[Any]", Any]] = []
        self.subscriptions: Set[Any] = set()
        self.bg_loop: Optional[asyncio.AbstractEventLoop] = None
        self.dead_loop: Optional[asyncio.AbstractEventLoop] = None
        self.bg_thread: Optional[threading.Thread] = None
        self.http_servers: Set[Any] = set()
        self.uuid_buf = ffi.new("char[]", lib.TASKER_UUID_BUFSIZE)
        self.state_p = ffi.new("tasker_task_state *")
        fdp = ffi.new("int *")
        check(lib.tasker_coordinator_fd(fdp, ptr))
        self.fd = int(fdp[0])

    # -- locking -------------------------------------------------------------

    def unlock(self) -> None:
        """Releases the lock, then does what had to wait for it."""
        wakes = self.wakes
        if wakes:
            self.wakes = []
        self.lock.release()
        if wakes:
            self._wake(wakes)
        if self.close_requested and not self.closed:
            self.close_if_requested()
        if _graveyard:
            clear_graveyard()

    @staticmethod
    def _wake(wakes: List[Tuple["asyncio.Future[Any]", Any]]) -> None:
        by_loop: Dict[Any, List[Tuple["asyncio.Future[Any]", Any]]] = {}
        for item in wakes:
            by_loop.setdefault(item[0].get_loop(), []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_set_futures, items)
            except RuntimeError:
                pass  # that loop is closed; nobody is waiting any more

    def live_ptr(self) -> Any:
        """The C pointer (call with the lock held); raises Closed after close."""
        ptr = self.ptr
        if ptr is None:
            raise Closed("the coordinator is closed", category="state")
        return ptr

    def report(self, err: BaseException, what: str) -> None:
        loop = _get_running_loop()
        if loop is not None:
            loop.call_exception_handler(
                {"message": "tasker: error while %s" % what, "exception": err}
            )

    # -- bookkeeping (lock held) ----------------------------------------------

    def foreign_rec(self, uuid: str) -> _TaskRec:
        """A record for a task this process did not create (e.g. another worker's)."""
        self.lock.acquire()
        try:
            rec = self.recs.get(uuid)
            if rec is None:
                rec = self.recs[uuid] = _TaskRec(uuid, -1, own=False, keep=True)
            return rec
        finally:
            self.unlock()

    def finish(self, rec: _TaskRec, state: str) -> None:
        if rec.state is not None:
            return
        rec.state = state
        waiters = rec.waiters
        if waiters:
            rec.waiters = []
            running = _get_running_loop()
            for fut in waiters:
                if fut.get_loop() is running:
                    _set_future(fut, state)
                else:
                    # Woken in bulk by unlock(): one call_soon_threadsafe per
                    # loop and batch rather than one per task.
                    self.wakes.append((fut, state))
        if rec.event is not None:
            rec.event.set()
        self.watched.discard(rec)
        if rec.handles == 0:
            self.drop(rec)

    def drop(self, rec: _TaskRec) -> None:
        """Forgets a final task nobody holds a handle to."""
        if not rec.own:
            if not rec.tasks:
                self.recs.pop(rec.uuid, None)
            return
        if rec.keep or not self.forget_finished:
            return
        self.forget(rec)

    def forget(self, rec: _TaskRec) -> None:
        ptr = self.ptr
        if ptr is None:
            return
        rc = lib.tasker_task_forget(ptr, rec.uuid_b)
        if rc == _OK or rc == _ENOTFOUND:
            rec.forget_pending = False
            if self.recs.pop(rec.uuid, None) is not None:
                # Results die after the lock is released (see unlock()).
                _graveyard.append(rec)
        elif rc == _EBUSY:
            rec.forget_pending = True  # a handler still holds a step; retried later
        elif rc == _ENOTSUP:
            # A durable store keeps its tasks; only the binding's record goes.
            rec.forget_pending = False
            if self.recs.pop(rec.uuid, None) is not None:
                _graveyard.append(rec)
        # Anything else: keep the record; the task stays readable.

    def reap(self) -> None:
        released = self.released
        while released:
            rec = released.popleft()
            rec.handles -= 1
            if rec.handles == 0 and rec.state is not None:
                self.drop(rec)

    def check_final(self, rec: _TaskRec) -> None:
        ptr = self.ptr
        if ptr is None or rec.state is not None:
            return
        rc = lib.tasker_task_wait(self.state_p, ptr, rec.uuid_b, 0)
        if rc == _OK:
            self.finish(rec, _STATE_NAMES.get(int(self.state_p[0]), "unknown"))
        elif rc == _ENOTFOUND:
            self.finish(rec, "forgotten")

    def refresh_watched(self) -> None:
        self.lock.acquire()
        try:
            for rec in list(self.watched):
                if rec.state is not None or (not rec.waiters and rec.event is None):
                    self.watched.discard(rec)
                else:
                    self.check_final(rec)
        finally:
            self.unlock()

    # -- completing steps ------------------------------------------------------

    def _account_ok(self, step: Step, value: Any, rc: int) -> None:
        # Keep in step with the inlined copy in complete_ok().
        rec = step._rec
        step._c = None
        if rc == _OK:
            rec.outcomes.append((step.name, value))
            rec.remaining -= 1
            if rec.suspect:
                self.check_final(rec)
            elif rec.remaining == 0:
                self.finish(rec, "complete")
        else:
            rec.suspect = True
            self.check_final(rec)
        if rec.forget_pending:
            self.forget(rec)

    def complete_ok(self, pairs: List[Tuple[Step, Any]]) -> None:
        """Completes successful attempts in one C call (any thread)."""
        if self.result_mode == "json":
            for step, value in pairs:
                self.complete_one(step, value)
            return
        cs = [p[0]._c for p in pairs]
        if None in cs:
            # Some were completed already (the coordinator was closed).
            pairs = [p for p in pairs if p[0]._c is not None]
            cs = [p[0]._c for p in pairs]
        n = len(cs)
        if not n:
            return
        ptrs = NULL
        for p in pairs:
            if p[1] is not None:
                ptrs = ffi.new(
                    "void *[]", [NULL if v is None else store_object(v) for _, v in pairs]
                )
                break
        steps = ffi.new("tasker_step *[]", cs)
        rcs = ffi.new("int[]", n)
        # Completing needs no lock: step completion is thread-safe in the
        # library, also against a concurrent close (it then returns
        # TASKER_ECLOSED and releases the step).  The bookkeeping does.
        lib.tpy_complete_batch(rcs, steps, ptrs, n, FREE_PTR)
        finish = self.finish
        lock = self.lock
        lock.acquire()
        try:
            for (step, value), rc in zip(pairs, ffi.unpack(rcs, n)):
                rec = step._rec
                step._c = None
                if rc == _OK:
                    rec.outcomes.append((step.name, value))
                    rec.remaining -= 1
                    if rec.suspect:
                        self.check_final(rec)
                    elif rec.remaining == 0:
                        finish(rec, "complete")
                else:
                    rec.suspect = True
                    self.check_final(rec)
                if rec.forget_pending:
                    self.forget(rec)
            if self.released:
                self.reap()
        finally:
            self.unlock()

    def complete_one(self, step: Step, value: Any) -> None:
        """Completes one successful attempt (any thread)."""
        c = step._c
        if c is None:
            return
        if value is None:
            payload = None
        elif self.result_mode == "json":
            try:
                payload = json.dumps(value).encode("utf-8")
            except (TypeError, ValueError) as exc:
                self.fail_step(
                    step,
                    _errors.PermanentError(
                        "step %r returned a result that is not JSON-serialisable (%s); this "
                        "coordinator records results as JSON" % (step.name, exc)
                    ),
                )
                return
        else:
            payload = store_object(value)
        self.lock.acquire()
        try:
            if payload is None:
                rc = lib.tasker_step_succeed(c, NULL, 0)
            elif self.result_mode == "json":
                rc = lib.tasker_step_succeed(c, payload, len(payload))
            else:
                rc = lib.tasker_step_succeed_pointer(c, payload, FREE_PTR)
            self._account_ok(step, value, rc)
        finally:
            self.unlock()

    def fail_step(self, step: Step, exc: BaseException) -> None:
        """Completes a failed attempt (any thread)."""
        c = step._c
        if c is None:
            return
        cls, msg, retryable, retry_after_ms, ctx = _failure_fields(exc)
        fatal = not retryable or lib.tasker_step_attempt(c) >= lib.tasker_step_max_attempts(c)
        self.lock.acquire()
        try:
            rc = lib.tpy_step_fail(c, cls, msg, retryable, retry_after_ms, ctx)
            rec = step._rec
            step._c = None
            if rc != _OK or fatal:
                rec.suspect = True
            if rec.suspect:
                self.check_final(rec)
            if rec.forget_pending:
                self.forget(rec)
        finally:
            self.unlock()

    def fail_missing(self) -> None:
        steps, self.missing_handler = self.missing_handler, []
        for step in steps:
            self.fail_step(
                step,
                _errors.PermanentError(
                    "no Python handler for step %r in this process" % step.name
                ),
            )

    # -- executors -------------------------------------------------------------

    def sync_pool(self) -> _SyncPool:
        pool = self.pool
        if pool is None:
            pool = self.pool = _SyncPool(self, self.max_threads)
        return pool

    def attach(self, loop: asyncio.AbstractEventLoop) -> _Driver:
        """Makes sure some loop serves the coordinator; prefers `loop`."""
        drv = self.driver
        if drv is not None:
            if drv.loop is loop and drv.attached:
                return drv
            if drv.attached and drv.loop.is_running() and drv.loop is not loop:
                return drv  # another thread's loop serves it
            drv.detach()
        if self.closed:
            raise Closed("the coordinator is closed", category="state")
        drv = self.driver = _Driver(self, loop)
        drv.attach()
        if self.watched:
            drv.start_watch()
        return drv

    def watch(self, rec: _TaskRec) -> None:
        """Re-reads `rec` periodically while someone waits for it (lock held)."""
        self.watched.add(rec)
        drv = self.driver
        if drv is None:
            return
        if _get_running_loop() is drv.loop:
            drv.start_watch()
        else:
            try:
                drv.loop.call_soon_threadsafe(drv.start_watch)
            except RuntimeError:
                pass

    # -- closing ---------------------------------------------------------------

    def request_close(self) -> None:
        """Closes as soon as it is safe (finalizers call this)."""
        if self.closed:
            return
        self.close_requested = True
        drv = self.driver
        if drv is not None and drv.attached and drv.loop.is_running():
            try:
                drv.loop.call_soon_threadsafe(self.close_if_requested)
                return
            except RuntimeError:
                pass
        if self.lock.acquire(False):
            self.lock.release()
            self.close_if_requested()
        # else: whoever holds the lock closes in unlock().

    def _pre_close(self) -> bool:
        """Stops what must stop before the coordinator closes, without the lock.

        Returns False if closing must be left to another thread (we are on
        a subscription's own thread, which the library would have to join).
        """
        if in_event_callback():
            threading.Thread(target=self.close, kwargs={"wait": False}, daemon=True).start()
            return False
        for server in list(self.http_servers):
            server.stop()
        for sub in list(self.subscriptions):
            sub.close()
        return True

    def close_if_requested(self) -> None:
        if self.closed or not self.close_requested:
            return
        drv = self.driver
        if (
            drv is not None
            and drv.attached
            and drv.loop.is_running()
            and _get_running_loop() is not drv.loop
        ):
            return  # a callback on that loop will do it
        if self.lock.locked():
            return  # the holder will call us again from unlock()
        if not self._pre_close():
            return
        if not self.lock.acquire(False):
            return  # the holder will call us again from unlock()
        try:
            self._close_locked()
        finally:
            self.lock.release()
        self._shutdown_private()
        clear_graveyard()

    def _shutdown_private(self) -> None:
        """Lets handlers cancelled on the private loop finish, then closes it."""
        loop, self.dead_loop = self.dead_loop, None
        if loop is None or loop.is_closed():
            return
        if _get_running_loop() is None and not loop.is_running():
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            if pending:
                try:
                    loop.run_until_complete(asyncio.wait(pending, timeout=5.0))
                except Exception:  # pragma: no cover - best effort at shutdown
                    pass
        if not loop.is_running():
            loop.close()

    def close(self, wait: bool = True, release: bool = False) -> None:
        """Closes the coordinator.  With `release`, steps claimed but not
        completed (queued for the pool, suspended on the loop) are not
        failed: the library's close gives their leases back (postgres), so
        another worker runs them without an error recorded against them.
        `python -m tasker worker` uses it after a drain that timed out."""
        if self.closed:
            return
        drv = self.driver
        if (
            drv is not None
            and drv.attached
            and drv.loop.is_running()
            and _get_running_loop() is not drv.loop
        ):
            # The loop serving us runs in another thread: close there, between
            # its callbacks, so no claim is in progress.
            done = threading.Event()

            def close_there() -> None:
                try:
                    self.close(wait=False, release=release)
                finally:
                    done.set()

            try:
                drv.loop.call_soon_threadsafe(close_there)
            except RuntimeError:
                pass
            else:
                if wait:
                    done.wait()
                return
        if not self._pre_close():
            return
        self.lock.acquire()
        try:
            self._close_locked(release)
        finally:
            self.lock.release()
        self._shutdown_private()
        clear_graveyard()

    def _close_locked(self, release: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        # With `release`: C handles of steps to give back rather than fail;
        # completed (ECLOSED, which frees them) once the library has closed.
        held: List[Any] = []
        ptr = self.ptr
        drv = self.driver
        if drv is not None:
            drv.detach()
        closed_exc = Closed("the coordinator was closed while the step ran", category="state")
        cls, msg, _, _, ctx = _failure_fields(closed_exc)
        # Steps queued for the pool or suspended on the loop: complete them
        # here (as retryable failures) so the library can release them.
        queued = self.pool.take_queued() if self.pool is not None else []
        for step in queued:
            c = step._c
            if c is not None:
                step._c = None
                if release:
                    held.append(c)
                else:
                    lib.tpy_step_fail(c, cls, msg, 1, -1, ctx)
        running = _get_running_loop()
        for rec in list(self.recs.values()):
            for task, step in list(rec.tasks.items()):
                c = step._c
                if c is not None:
                    step._c = None
                    if release:
                        held.append(c)
                    else:
                        lib.tpy_step_fail(c, cls, msg, 1, -1, ctx)
                loop = task.get_loop()
                if loop is running:
                    task.cancel()
                else:
                    try:
                        loop.call_soon_threadsafe(task.cancel)
                    except RuntimeError:
                        pass
            rec.tasks.clear()
        if self.pool is not None:
            self.pool.stop()
        self.ptr = None
        lib.tasker_coordinator_close(ptr)
        for c in held:
            lib.tpy_step_fail(c, cls, msg, 1, -1, ctx)  # TASKER_ECLOSED: frees the handle
        # Wake everyone still waiting: their tasks will never finish here.
        for rec in list(self.recs.values()):
            if rec.state is None:
                waiters, rec.waiters = rec.waiters, []
                for fut in waiters:
                    try:
                        fut.get_loop().call_soon_threadsafe(_set_future, fut, None)
                    except RuntimeError:
                        pass
                if rec.event is not None:
                    rec.event.set()
        _graveyard.append(list(self.recs.values()))
        self.recs.clear()
        self.watched.clear()
        private = self.private_loop
        if private is not None and not private.is_running():
            # Closed by _shutdown_private() once the lock is released: the
            # cancelled handlers on it may run user code.
            self.private_loop = None
            self.dead_loop = private
        bg = self.bg_loop
        if bg is not None:
            self.bg_loop = None
            try:
                bg.call_soon_threadsafe(bg.stop)
            except RuntimeError:
                pass


class Coordinator:
    """A tasker coordinator: templates, handlers, and the tasks they run.

    Args:
        config: configuration keys (see tasker.h), e.g.
            ``{"memory.retain_finished": 10000}``.  Values are converted to text.
        database_url: a PostgreSQL connection string; selects the postgres
            store (``store=postgres`` and ``database.url``).
        config_file: a file of ``key = value`` lines, loaded before `config`.
        env_prefix: load configuration from environment variables with this
            prefix (e.g. ``"TASKER_"``) before `config`; ``None`` skips it.
        max_threads: most threads running sync handlers at once (default
            ``min(32, cpu_count + 4)``).
        result_mode: ``"object"`` hands dependents the very object a step
            returned (memory store only); ``"json"`` stores results as JSON
            (visible in :meth:`TaskHandle.info`, required across processes).
            ``"auto"`` (default) picks ``"object"`` for the memory store and
            ``"json"`` otherwise.
        forget_finished: forget a finished task in the library once no
            :class:`TaskHandle` refers to it, so memory stays flat however
            many tasks run.  Tasks created with an idempotency key are kept
            (forgetting them would forget the key).

    Use it as a context manager, or call :meth:`close`; an unclosed
    Coordinator is closed when it is garbage-collected.
    """

    def __init__(
        self,
        config: Optional[Mapping[str, Any]] = None,
        *,
        database_url: Optional[str] = None,
        config_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        env_prefix: Optional[str] = None,
        max_threads: Optional[int] = None,
        result_mode: str = "auto",
        forget_finished: bool = True,
    ) -> None:
        if result_mode not in ("auto", "object", "json"):
            raise InvalidArgument(
                "result_mode must be 'auto', 'object' or 'json', not %r" % (result_mode,),
                category="argument",
            )
        if max_threads is None:
            max_threads = min(32, (os.cpu_count() or 1) + 4)
        if not isinstance(max_threads, int) or max_threads < 1:
            raise InvalidArgument("max_threads must be an int >= 1", category="argument")
        settings: List[Tuple[str, str]] = []
        # What `python -m tasker worker` replays when it serves this
        # coordinator's handlers and templates on its own database.
        self._declaration: Dict[str, Any] = {
            "config": dict(config or {}),
            "config_file": config_file,
            "env_prefix": env_prefix,
            "templates": [],
        }
        if database_url is not None:
            settings.append(("store", "postgres"))
            settings.append(("database.url", str(database_url)))
        for key, value in (config or {}).items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            settings.append((str(key), text))

        cfgp = ffi.new("tasker_config **")
        check(lib.tasker_config_new(cfgp))
        cfg = cfgp[0]
        store = "memory"
        try:
            if config_file is not None:
                check(lib.tasker_config_load_file(cfg, os.fsencode(config_file)))
            if env_prefix is not None:
                check(lib.tasker_config_load_env(cfg, env_prefix.encode("utf-8")))
            for key, text in settings:
                check(lib.tasker_config_set(cfg, key.encode("utf-8"), text.encode("utf-8")))
            valp = ffi.new("char **")
            if lib.tasker_config_get(valp, cfg, b"store") == _OK:
                store = ffi.string(valp[0]).decode()
                lib.tasker_free(valp[0])
            check(lib.tasker_config_validate(cfg))
            coordp = ffi.new("tasker_coordinator **")
            check(lib.tasker_coordinator_open(coordp, cfg))
        finally:
            lib.tasker_config_free(cfg)
        if result_mode == "auto":
            result_mode = "object" if store == "memory" else "json"
        self._core = _Core(coordp[0], result_mode, forget_finished, max_threads)
        self.store = store
        self.result_mode = result_mode

    # -- lifetime ----------------------------------------------------------------

    def close(self) -> None:
        """Closes the coordinator (idempotent).

        Tasks still running are abandoned; steps in flight are released when
        their handlers return.  Waiters of unfinished tasks get
        :class:`tasker.Closed`.
        """
        thread = self._core.bg_thread
        self._core.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._core.closed

    def __enter__(self) -> "Coordinator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "Coordinator":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        core = self.__dict__.get("_core")
        if core is not None:
            try:
                core.request_close()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    def __repr__(self) -> str:
        return "<tasker.Coordinator store=%s%s>" % (self.store, " closed" if self.closed else "")

    # -- handlers ----------------------------------------------------------------

    def handler(
        self, name: Union[str, Callable[..., Any], None] = None, *, replace: bool = False
    ) -> Any:
        """Decorator registering a handler (``def`` or ``async def``).

        ``@app.handler("fetch")`` registers under "fetch"; a bare
        ``@app.handler`` uses the function's name.  The handler receives a
        :class:`Step` and returns the step's result.
        """
        if callable(name):
            fn = name
            self.register_handler(fn.__name__, fn, replace=replace)
            return fn

        def decorate(fn: F) -> F:
            self.register_handler(name or fn.__name__, fn, replace=replace)
            return fn

        return decorate

    def register_handler(
        self, name: str, fn: Callable[[Step], Any], *, replace: bool = False
    ) -> None:
        """Registers `fn` as handler `name`.

        With ``replace=True`` an existing Python handler of that name is
        replaced (useful in notebooks); otherwise re-registering raises
        :class:`tasker.AlreadyExists`.
        """
        if not isinstance(name, str):
            raise TypeError("a handler name is a str, not %s" % type(name).__name__)
        if not callable(fn):
            raise TypeError("handler %r is not callable" % name)
        core = self._core
        entry = (fn, _is_async_callable(fn))
        core.lock.acquire()
        try:
            ptr = core.live_ptr()
            if name in core.handlers:
                if not replace:
                    raise _errors.AlreadyExists(
                        "handler %r is already registered (pass replace=True to replace it)"
                        % name,
                        category="handler",
                        context={"handler": name},
                    )
                core.handlers[name] = entry
                return
            rc = lib.tasker_handler_register(ptr, name.encode("utf-8"), NULL, NULL, NULL)
            if rc != _OK:
                raise error_from_last(rc)
            core.handlers[name] = entry
        finally:
            core.unlock()

    # -- templates ----------------------------------------------------------------

    def template(
        self,
        spec: Any = None,
        *,
        steps: Any = None,
        retry: Optional[Mapping[str, Any]] = None,
        timeout_ms: Optional[int] = None,
    ) -> Template:
        """Registers a template and returns it.

        Accepted forms:

        * ``app.template("etl/daily@1", steps={"fetch": [], "clean": ["fetch"]})``
          -- a name and a mapping of step -> dependencies (or step -> dict of
          options: ``depends_on``, ``handler``, ``retry``, ``timeout_ms``);
        * a dict in the template JSON format of tasker.h (``steps`` may also
          be such a mapping);
        * JSON text;
        * a path to a ``.json``, ``.yaml`` or ``.yml`` file (YAML needs PyYAML).

        `retry` and `timeout_ms` apply to steps that do not set their own.
        Registering the same template again is a no-op; different steps under
        the same ``namespace/name@version`` raise :class:`tasker.AlreadyExists`.
        Rejections raise :class:`tasker.TemplateError` whose ``context``
        names the reason (``cycle``, ``unknown_dependency``, ...).
        """
        text, doc = build_template(spec, steps, retry, timeout_ms)
        raw = text.encode("utf-8")
        core = self._core
        core.lock.acquire()
        try:
            rc = lib.tasker_template_register_json(core.live_ptr(), raw, len(raw))
            if rc != _OK:
                raise error_from_last(rc)
        finally:
            core.unlock()
        if doc is None:  # pragma: no cover - the library accepted text Python could not parse
            raise InvalidArgument("template text is not JSON", category="template")
        if text not in self._declaration["templates"]:
            self._declaration["templates"].append(text)
        tmpl = template_from_doc(doc)
        n = len(tmpl.steps)
        core.step_counts[(tmpl.namespace, tmpl.name, tmpl.version)] = n
        core.counts_by_name.setdefault((tmpl.namespace, tmpl.name), set()).add(n)
        return tmpl

    def _resolve(self, template: Union[str, Template]) -> Tuple[bytes, bytes, Any, int]:
        if isinstance(template, Template):
            n = self._core.step_counts.get((template.namespace, template.name, template.version))
            return template._c_ns, template._c_name, template._c_version, -1 if n is None else n
        ns, name, version = parse_ref(template)
        core = self._core
        if version is None:
            counts = core.counts_by_name.get((ns, name))
            n = next(iter(counts)) if counts and len(counts) == 1 else -1
            return ns.encode("utf-8"), name.encode("utf-8"), NULL, n
        n = core.step_counts.get((ns, name, version), -1)
        return ns.encode("utf-8"), name.encode("utf-8"), version.encode("utf-8"), n

    # -- tasks ----------------------------------------------------------------------

    def submit(
        self,
        template: Union[str, Template],
        context: Optional[Mapping[str, Any]] = None,
        *,
        idempotency_key: Optional[str] = None,
        priority: int = 0,
    ) -> "TaskHandle":
        """Creates a task and returns its :class:`TaskHandle` at once.

        Args:
            template: a :class:`Template` or ``"namespace/name[@version]"``
                (without a version: the highest registered).
            context: the task's input, a JSON-serialisable mapping.
            idempotency_key: a second submit with the same key (same
                template) returns the first task instead of creating one.
            priority: higher runs first (-1000000..1000000).

        Inside a running event loop the coordinator starts serving that
        loop, so the task progresses even if nobody awaits it.
        """
        ns_b, name_b, ver_b, n_steps = self._resolve(template)
        if context is None:
            ctx: Any = NULL
            ctx_len = 0
        else:
            if not isinstance(context, Mapping):
                raise InvalidArgument(
                    "a task's context is a mapping (a JSON object), not %s"
                    % type(context).__name__,
                    category="argument",
                )
            try:
                ctx = json.dumps(context).encode("utf-8")
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(
                    "the task's context is not JSON-serialisable: %s" % exc, category="argument"
                ) from exc
            ctx_len = len(ctx)
        key: Any = NULL if idempotency_key is None else str(idempotency_key).encode("utf-8")
        if not isinstance(priority, int):
            raise TypeError("priority is an int")
        core = self._core
        lock = core.lock
        lock.acquire()
        try:
            ptr = core.live_ptr()
            if core.released:
                core.reap()
            buf = core.uuid_buf
            rc = lib.tpy_task_create(buf, ptr, ns_b, name_b, ver_b, ctx, ctx_len, key, priority)
            if rc != _OK:
                raise error_from_last(rc)
            uuid = _string(buf).decode("ascii")
            rec = core.recs.get(uuid)
            if rec is None:
                keep = idempotency_key is not None
                rec = _TaskRec(uuid, n_steps, own=True, keep=keep)
                core.recs[uuid] = rec
                if idempotency_key is not None:
                    # The key may name a task that ran before this record.
                    rec.suspect = True
                    core.check_final(rec)
            rec.handles += 1
        finally:
            core.unlock()
        handle = TaskHandle(self, rec)
        loop = _get_running_loop()
        if loop is not None:
            drv = core.driver
            if drv is None or drv.loop is not loop or not drv.attached:
                core.attach(loop)
        return handle

    async def run(
        self,
        template: Union[str, Template],
        context: Optional[Mapping[str, Any]] = None,
        *,
        idempotency_key: Optional[str] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Runs a task to the end on the current event loop.

        Returns the results of its steps by name.  Raises
        :class:`tasker.TaskFailed` (or :class:`tasker.TaskCancelled`) if the
        task does not complete, :class:`tasker.Timeout` after `timeout`
        seconds (the task keeps running).
        """
        handle = self.submit(
            template, context, idempotency_key=idempotency_key, priority=priority
        )
        return await handle.get_async(timeout)

    def run_sync(
        self,
        template: Union[str, Template],
        context: Optional[Mapping[str, Any]] = None,
        *,
        idempotency_key: Optional[str] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Like :meth:`run`, for code without an event loop."""
        handle = self.submit(
            template, context, idempotency_key=idempotency_key, priority=priority
        )
        return handle.get(timeout)

    def task(self, uuid: str) -> "TaskHandle":
        """A handle for an existing task of this coordinator."""
        core = self._core
        uuid = str(uuid)
        core.lock.acquire()
        try:
            ptr = core.live_ptr()
            rec = core.recs.get(uuid)
            if rec is None:
                rc = lib.tasker_task_wait(core.state_p, ptr, uuid.encode("ascii"), 0)
                if rc != _OK and rc != _ETIMEOUT:
                    raise error_from_last(rc)
                rec = _TaskRec(uuid, -1, own=True, keep=True)
                core.recs[uuid] = rec
                if rc == _OK:
                    rec.state = _STATE_NAMES.get(int(core.state_p[0]), "unknown")
            rec.handles += 1
        finally:
            core.unlock()
        return TaskHandle(self, rec)

    def info(self, uuid: str) -> Dict[str, Any]:
        """The task as a dict (tasker_task_get): state, steps, errors, history."""
        core = self._core
        out = ffi.new("char **")
        core.lock.acquire()
        try:
            rc = lib.tasker_task_get(out, core.live_ptr(), str(uuid).encode("ascii"))
            if rc != _OK:
                raise error_from_last(rc)
            try:
                text = ffi.string(out[0])
            finally:
                lib.tasker_free(out[0])
        finally:
            core.unlock()
        return json.loads(text)

    # -- serving without an event loop of your own -------------------------------

    def start(self) -> None:
        """Serves the coordinator from a background thread with its own event loop.

        For programs without asyncio: steps then run as soon as tasks are
        submitted, not only while someone waits.  ``async def`` handlers run
        on that loop.  :meth:`stop` or :meth:`close` ends it.
        """
        core = self._core
        if core.bg_thread is not None and core.bg_thread.is_alive():
            return
        if core.closed:
            raise Closed("the coordinator is closed", category="state")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: List[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                core.attach(loop)
            except BaseException as exc:  # e.g. closed meanwhile
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                # Handlers still suspended here cannot finish once the loop is gone.
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                drv = core.driver
                if drv is not None and drv.loop is loop:
                    drv.detach()
                loop.close()

        core.bg_loop = loop
        core.bg_thread = threading.Thread(target=serve, name="tasker-loop", daemon=True)
        core.bg_thread.start()
        ready.wait()
        if failure:
            core.bg_loop = core.bg_thread = None
            raise failure[0]

    def stop(self) -> None:
        """Stops the background loop of :meth:`start` (steps it runs are cancelled)."""
        core = self._core
        loop, thread = core.bg_loop, core.bg_thread
        core.bg_loop = core.bg_thread = None
        if loop is not None:
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)

    # -- observability -------------------------------------------------------------

    def _text_call(self, fn: Any) -> str:
        core = self._core
        out = ffi.new("char **")
        core.lock.acquire()
        try:
            rc = fn(out, core.live_ptr())
            if rc != _OK:
                raise error_from_last(rc)
            try:
                return ffi.string(out[0]).decode("utf-8")
            finally:
                lib.tasker_free(out[0])
        finally:
            core.unlock()

    def metrics(self) -> str:
        """Counters, histograms and gauges in the Prometheus text format."""
        return self._text_call(lib.tasker_metrics_text)

    def health(self) -> Dict[str, Any]:
        """Health report: status, store reachability, queue depths, circuits."""
        return json.loads(self._text_call(lib.tasker_health_json))

    def status(self) -> Dict[str, Any]:
        """What an operator's status page shows: task counts by namespace and
        state, recent failures, dead letters (steps in error), circuits."""
        return json.loads(self._text_call(lib.tasker_status_json))

    def serve_http(self, port: int = 0, host: Optional[str] = None) -> HttpServer:
        """Serves /health/live, /health/ready, /metrics, /status.json and a
        status page on `host` (default 127.0.0.1) and `port` (0: any free
        port; see ``.port``).  Stopped by ``.stop()`` or by :meth:`close`."""
        return HttpServer(self._core, host, port)

    def subscribe(
        self,
        callback: Callable[[Any], Any],
        events: Union[None, str, List[str]] = None,
        *,
        buffer: int = 0,
        loop: Optional[asyncio.AbstractEventLoop] = None,
    ) -> Subscription:
        """Calls `callback(event)` for each lifecycle event of the given types
        (all by default; see :data:`tasker.EVENT_TYPES`).

        Events are buffered (`buffer` events, 0: 65536) and delivered in
        order on a thread of their own, so a slow callback never slows the
        steps; when the buffer is full, events are dropped and counted.
        Called inside a running event loop (or with `loop=`), the callback
        runs on that loop instead; ``async def`` callbacks need a loop.
        """
        if loop is None:
            loop = _get_running_loop()
            if loop is None and asyncio.iscoroutinefunction(callback):
                raise InvalidArgument(
                    "an async event callback needs an event loop: subscribe inside one or "
                    "pass loop=",
                    category="argument",
                )
        return Subscription(self._core, callback, event_mask(events), int(buffer), loop)

    def events(
        self, events: Union[None, str, List[str]] = None, *, buffer: int = 0
    ) -> EventStream:
        """Lifecycle events as an async iterator (inside a running loop)::

            async with app.events(["task_completed"]) as stream:
                async for event in stream:
                    ...
        """
        return EventStream(self._core, event_mask(events), int(buffer))

    def circuit(self, name: str) -> str:
        """State of circuit `name` (``"handler:NAME"`` or ``"namespace:NAME"``):
        ``"closed"``, ``"open"`` or ``"half_open"``."""
        core = self._core
        statep = ffi.new("tasker_circuit_state *")
        core.lock.acquire()
        try:
            rc = lib.tasker_circuit_get(statep, core.live_ptr(), name.encode("utf-8"))
            if rc != _OK:
                raise error_from_last(rc)
        finally:
            core.unlock()
        return {
            int(lib.TASKER_CIRCUIT_CLOSED): "closed",
            int(lib.TASKER_CIRCUIT_OPEN): "open",
            int(lib.TASKER_CIRCUIT_HALF_OPEN): "half_open",
        }.get(int(statep[0]), "unknown")

    def force_circuit(self, name: str, mode: str) -> None:
        """Overrides circuit `name`: ``"open"`` (nothing passes), ``"closed"``
        (everything passes) or ``"auto"`` (the breaker decides again)."""
        modes = {
            "auto": lib.TASKER_CIRCUIT_AUTO,
            "open": lib.TASKER_CIRCUIT_FORCE_OPEN,
            "closed": lib.TASKER_CIRCUIT_FORCE_CLOSED,
        }
        if mode not in modes:
            raise InvalidArgument(
                "circuit mode must be 'auto', 'open' or 'closed', not %r" % (mode,),
                category="argument",
            )
        core = self._core
        core.lock.acquire()
        try:
            rc = lib.tasker_circuit_force(core.live_ptr(), name.encode("utf-8"), modes[mode])
            if rc != _OK:
                raise error_from_last(rc)
        finally:
            core.unlock()

    # -- execution without awaiting ----------------------------------------------

    def wait_all(
        self, handles: "List[TaskHandle]", timeout: Optional[float] = None
    ) -> List[str]:
        """Blocks until every handle's task is final; returns their states.

        One wait for many tasks: cheaper than calling :meth:`TaskHandle.wait`
        on each.  Raises :class:`tasker.Timeout` after `timeout` seconds.
        """
        recs = [h._rec for h in handles]
        self._wait_sync(recs, timeout)
        return [rec.state for rec in recs]  # type: ignore[misc]

    async def wait_all_async(
        self, handles: "List[TaskHandle]", timeout: Optional[float] = None
    ) -> List[str]:
        """Awaits every handle's task; returns their final states."""
        recs = [h._rec for h in handles]
        await self._wait_async(recs, timeout)
        return [rec.state for rec in recs]  # type: ignore[misc]

    def _timeout_error(self, recs: List[_TaskRec], timeout: Optional[float]) -> _errors.Timeout:
        pending = [r.uuid for r in recs if r.state is None]
        return _errors.Timeout(
            "%d task(s) did not finish within %ss (first: %s)"
            % (len(pending), timeout, pending[0] if pending else "-"),
            category="state",
            context={"tasks": pending[:10]},
        )

    def _wait_sync(self, recs: List[_TaskRec], timeout: Optional[float]) -> None:
        """Waits until every record is final, driving steps if nobody else does."""
        core = self._core
        if all(rec.state is not None for rec in recs):
            return
        if _get_running_loop() is not None:
            raise RuntimeError(
                "a blocking wait inside a running event loop would stall it; "
                "use `await handle` or `await app.run(...)` instead"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with core.drive_lock:
                drv = core.driver
                served_elsewhere = drv is not None and drv.attached and drv.loop.is_running()
                loop = None
                if not served_elsewhere:
                    loop = core.private_loop
                    if loop is None or loop.is_closed():
                        if core.closed:
                            raise Closed("the coordinator is closed", category="state")
                        loop = core.private_loop = asyncio.new_event_loop()
                    if loop.is_running():
                        served_elsewhere = True
                        loop = None
            if loop is not None:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    loop.run_until_complete(self._wait_async(recs, remaining))
                    return
                except RuntimeError:
                    if loop.is_running():  # another thread started it first
                        continue
                    raise
                finally:
                    if core.closed and not loop.is_running() and not loop.is_closed():
                        core.private_loop = None
                        core.dead_loop = loop
                        core._shutdown_private()
            # Another thread's loop serves the coordinator: wait for its news.
            events = []
            core.lock.acquire()
            try:
                for rec in recs:
                    if rec.state is None:
                        if rec.event is None:
                            rec.event = threading.Event()
                        core.watch(rec)
                        events.append(rec.event)
            finally:
                core.unlock()
            for event in events:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not event.wait(remaining):
                    raise self._timeout_error(recs, timeout)
            if core.closed and any(rec.state is None for rec in recs):
                raise Closed(
                    "the coordinator was closed before the task finished", category="state"
                )
            return

    async def _wait_async(self, recs: List[_TaskRec], timeout: Optional[float]) -> None:
        """Awaits until every record is final."""
        core = self._core
        if all(rec.state is not None for rec in recs):
            return
        loop = asyncio.get_running_loop()
        core.attach(loop)
        futs = []
        closed = False
        core.lock.acquire()
        try:
            if core.closed:
                closed = True
            else:
                create = loop.create_future
                for rec in recs:
                    if rec.state is None:
                        fut = create()
                        rec.waiters.append(fut)
                        futs.append((rec, fut))
                        core.watch(rec)
        finally:
            core.unlock()
        if futs:
            try:
                if len(futs) == 1:
                    aw: Any = futs[0][1]
                else:
                    aw = asyncio.gather(*(f for _, f in futs))
                if timeout is None:
                    await aw
                else:
                    await asyncio.wait_for(aw, timeout)
            except asyncio.TimeoutError:
                raise self._timeout_error(recs, timeout) from None
            finally:
                if any(not f.done() or f.cancelled() for _, f in futs):
                    core.lock.acquire()
                    try:
                        for rec, fut in futs:
                            if fut in rec.waiters:
                                rec.waiters.remove(fut)
                    finally:
                        core.unlock()
        if closed or any(rec.state is None for rec in recs):
            raise Closed("the coordinator was closed before the task finished", category="state")


class TaskHandle:
    """A task created by :meth:`Coordinator.submit`.

    ``await handle`` waits and returns the results (like :meth:`get_async`).
    While a handle exists its task stays readable in the library; once every
    handle is gone and the task is finished, the binding forgets it.
    """

    __slots__ = ("_app", "_core", "_rec", "__weakref__")

    def __init__(self, app: Coordinator, rec: _TaskRec) -> None:
        self._app = app
        self._core = app._core
        self._rec = rec

    def __del__(self) -> None:
        try:
            self._core.released.append(self._rec)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    @property
    def uuid(self) -> str:
        """The task's UUID."""
        return self._rec.uuid

    @property
    def coordinator(self) -> Coordinator:
        return self._app

    def __repr__(self) -> str:
        return "<tasker.TaskHandle %s %s>" % (self._rec.uuid, self._rec.state or "unfinished")

    # -- state ----------------------------------------------------------------------

    def status(self) -> str:
        """The task's state: pending, running, complete, error, cancelled, ..."""
        rec = self._rec
        if rec.state is not None:
            return rec.state
        core = self._core
        core.lock.acquire()
        try:
            if rec.state is not None:
                return rec.state
            rc = lib.tasker_task_wait(core.state_p, core.live_ptr(), rec.uuid_b, 0)
            if rc != _OK and rc != _ETIMEOUT:
                raise error_from_last(rc)
            return _STATE_NAMES.get(int(core.state_p[0]), "unknown")
        finally:
            core.unlock()

    @property
    def state(self) -> str:
        """Same as :meth:`status`."""
        return self.status()

    def done(self) -> bool:
        """True once the binding has seen the task reach a final state."""
        return self._rec.state is not None

    def wait(self, timeout: Optional[float] = None) -> str:
        """Blocks until the task is final; returns its state.

        Runs the coordinator's steps on a private event loop if no loop
        serves it.  Raises :class:`tasker.Timeout` after `timeout` seconds.
        """
        self._app._wait_sync([self._rec], timeout)
        return self._rec.state  # type: ignore[return-value]

    async def wait_async(self, timeout: Optional[float] = None) -> str:
        """Waits on the running loop until the task is final; returns its state."""
        await self._app._wait_async([self._rec], timeout)
        return self._rec.state  # type: ignore[return-value]

    def get(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Waits, then returns :attr:`result` (raises if the task failed)."""
        self.wait(timeout)
        return self.result

    async def get_async(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Awaits the task, then returns :attr:`result` (raises if it failed)."""
        await self.wait_async(timeout)
        return self.result

    def __await__(self) -> Generator[Any, None, Dict[str, Any]]:
        return self.get_async().__await__()

    @property
    def result(self) -> Dict[str, Any]:
        """The results of the task's steps by name, once it completed.

        Raises :class:`tasker.StateError` if the task is not finished and
        :class:`tasker.TaskFailed` / :class:`tasker.TaskCancelled` if it
        finished without completing.
        """
        rec = self._rec
        state = rec.state
        if state is None:
            raise StateError("task %s has not finished" % rec.uuid, category="state")
        if state not in ("complete", "resolved_manually"):
            raise self._failure(state)
        return self.results

    @property
    def results(self) -> Dict[str, Any]:
        """The results of the steps that have succeeded so far, by name."""
        out = dict(self._rec.outcomes)
        if self._app.store != "memory":
            # Steps other processes ran (postgres: other workers) are known
            # only to the store; their results are its JSON.
            try:
                info = self.info()
            except _errors.Error:
                return out
            for s in info.get("steps", []):
                name = s.get("name")
                if name not in out and s.get("state") in ("complete", "resolved_manually"):
                    out[name] = s.get("result")
        return out

    def _failure(self, state: str) -> TaskFailed:
        try:
            info: Optional[Dict[str, Any]] = self.info()
        except _errors.Error:
            info = None
        errors: List[Dict[str, Any]] = []
        if info is not None:
            for s in info.get("steps", []):
                if s.get("state") == "error":
                    errs = s.get("errors") or []
                    errors.append(
                        {
                            "step": s.get("name"),
                            "attempts": s.get("attempts"),
                            "error": errs[-1] if errs else None,
                        }
                    )
        cls = TaskCancelled if state == "cancelled" else TaskFailed
        return cls(self._rec.uuid, state, errors, info)

    def info(self) -> Dict[str, Any]:
        """The whole task as a dict (see docs/python.md): steps, errors, history."""
        return self._app.info(self._rec.uuid)

    @property
    def steps(self) -> List[Dict[str, Any]]:
        """The task's steps, in template order, as dicts (state, attempts,
        errors, timings, dependencies)."""
        return list(self.info().get("steps", []))

    def errors(self) -> List[Dict[str, Any]]:
        """Every error record of every step (one per failed attempt)."""
        out = []
        for s in self.steps:
            for e in s.get("errors") or []:
                rec = dict(e)
                rec["step"] = s.get("name")
                out.append(rec)
        return out

    # -- control ----------------------------------------------------------------------

    def cancel(self) -> bool:
        """Cancels the task.  Returns False if it had already finished.

        Steps not yet finished become cancelled; async handlers still running
        for the task get ``asyncio.CancelledError``.
        """
        rec = self._rec
        core = self._core
        core.lock.acquire()
        try:
            rc = lib.tasker_task_cancel(core.live_ptr(), rec.uuid_b)
            if rc == _ESTATE:
                core.check_final(rec)
                return False
            if rc != _OK:
                raise error_from_last(rc)
            rec.suspect = True
            tasks = list(rec.tasks)
            core.finish(rec, "cancelled")
        finally:
            core.unlock()
        running = _get_running_loop()
        for task in tasks:
            loop = task.get_loop()
            if loop is running:
                task.cancel()
            else:
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:
                    pass
        return True

    def retry(self) -> None:
        """Manual retry of a task in error: failed steps run again."""
        rec = self._rec
        core = self._core
        core.lock.acquire()
        try:
            rc = lib.tasker_task_retry(core.live_ptr(), rec.uuid_b)
            if rc != _OK:
                raise error_from_last(rc)
            rec.state = None
            rec.suspect = True
        finally:
            core.unlock()
        self._kick()

    def resolve(self, step: str, result: Any = None) -> None:
        """Marks failed step `step` resolved manually with a JSON `result`;
        its dependents may then run."""
        rec = self._rec
        core = self._core
        payload = json.dumps(result).encode("utf-8")
        core.lock.acquire()
        try:
            rc = lib.tasker_step_resolve(
                core.live_ptr(), rec.uuid_b, step.encode("utf-8"), payload, len(payload)
            )
            if rc != _OK:
                raise error_from_last(rc)
            rec.outcomes.append((step, result))
            rec.state = None
            rec.suspect = True
            core.check_final(rec)
        finally:
            core.unlock()
        self._kick()

    def _kick(self) -> None:
        loop = _get_running_loop()
        if loop is not None:
            self._core.attach(loop)
