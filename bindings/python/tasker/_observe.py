"""Events, the HTTP endpoint, and the small types of the observability API."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional, Union

from . import _errors
from ._ffi import NULL, error_from_last, ffi, lib

if TYPE_CHECKING:  # pragma: no cover
    from ._coordinator import _Core

__all__ = ["Event", "Subscription", "EventStream", "HttpServer", "EVENT_TYPES"]

log = logging.getLogger("tasker")

# "step_succeeded" -> TASKER_EVENT_STEP_SUCCEEDED's bit, from the compiled header.
EVENT_TYPES: Dict[str, int] = {
    name[len("TASKER_EVENT_"):].lower(): int(getattr(lib, name))
    for name in dir(lib)
    if name.startswith("TASKER_EVENT_") and name not in ("TASKER_EVENT_ALL", "TASKER_EVENT_VERSION")
}
_TYPE_NAMES = {bit: name for name, bit in EVENT_TYPES.items()}
_ALL = int(lib.TASKER_EVENT_ALL)

# Set while this thread runs a subscription callback: such a thread must not
# unsubscribe or close the coordinator (the library would join itself).
_tls = threading.local()

# Handles passed to the library as userdata, kept alive until the library's
# free_userdata callback says the last event callback has run.
_handles: Dict[int, Any] = {}


def in_event_callback() -> bool:
    return bool(getattr(_tls, "active", False))


def event_mask(types: Union[None, str, Iterable[str]]) -> int:
    if types is None:
        return _ALL
    if isinstance(types, str):
        types = [types]
    mask = 0
    for t in types:
        bit = EVENT_TYPES.get(t)
        if bit is None:
            raise _errors.InvalidArgument(
                "unknown event type %r (known: %s)" % (t, ", ".join(sorted(EVENT_TYPES))),
                category="argument",
            )
        mask |= bit
    return mask


def _s(p: Any) -> str:
    return ffi.string(p).decode("utf-8", "replace") if p != NULL else ""


class Event:
    """One lifecycle event (task created, step succeeded, circuit opened, ...).

    Attributes:
        type: ``"task_created"``, ``"step_enqueued"``, ``"step_started"``,
            ``"step_succeeded"``, ``"step_failed"``, ``"step_retry_scheduled"``,
            ``"step_dead_lettered"``, ``"step_cancelled"``, ``"task_cancelled"``,
            ``"task_completed"``, ``"task_failed"`` or ``"circuit_changed"``.
        at: when it happened, in seconds since the Unix epoch.
        task_uuid, step_uuid, namespace, template, step, handler: what it is
            about ("" where it does not apply).
        attempt: the step's attempt number (0 where it does not apply).
        circuit, circuit_state: for ``circuit_changed``.
        error_class, error_message: for ``step_failed`` and ``step_dead_lettered``.
    """

    __slots__ = ("type", "at_ns", "task_uuid", "step_uuid", "namespace", "template", "step",
                 "handler", "attempt", "circuit", "circuit_state", "error_class",
                 "error_message")

    def __init__(self, ev: Any) -> None:
        self.type = _TYPE_NAMES.get(int(ev.type), "unknown")
        self.at_ns = int(ev.at_unix_ns)
        self.task_uuid = _s(ev.task_uuid)
        self.step_uuid = _s(ev.step_uuid)
        self.namespace = _s(ev.ns)
        self.template = _s(ev.template_name)
        self.step = _s(ev.step_name)
        self.handler = _s(ev.handler)
        self.attempt = int(ev.attempt)
        self.circuit = _s(ev.circuit)
        self.circuit_state = _s(ev.circuit_state)
        self.error_class = _s(ev.error_class)
        self.error_message = _s(ev.error_message)

    @property
    def at(self) -> float:
        return self.at_ns / 1e9

    def as_dict(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        what = self.step or self.circuit or ""
        return "<tasker.Event %s %s%s>" % (self.type, self.task_uuid or "", " " + what if what else "")


def _event_error(exc_type: Any, exc: Any, tb: Any) -> None:
    try:
        log.error("tasker: event callback failed", exc_info=(exc_type, exc, tb))
    except Exception:  # pragma: no cover - interpreter shutdown
        pass


@ffi.def_extern(onerror=_event_error)
def _tpy_event(ev: Any, userdata: Any) -> None:
    # Runs on the subscription's own thread, holding the GIL for the call.
    sub = ffi.from_handle(userdata)
    _tls.active = True
    try:
        sub._deliver(Event(ev))
    finally:
        _tls.active = False


@ffi.def_extern(onerror=_event_error)
def _tpy_event_free(userdata: Any) -> None:
    # The last callback has run: the handle (and the Subscription it keeps
    # alive for the library) may go.
    sub = ffi.from_handle(userdata)
    _handles.pop(id(sub), None)


class Subscription:
    """Delivers events to a callback until :meth:`close` (or coordinator close).

    Created by :meth:`Coordinator.subscribe`.  Without a loop the callback
    runs on the subscription's own thread; with one it runs on that loop
    (``async def`` callbacks are scheduled as tasks there).
    """

    def __init__(
        self,
        core: "_Core",
        fn: Callable[[Event], Any],
        mask: int,
        buffer_events: int,
        loop: Optional[asyncio.AbstractEventLoop],
    ) -> None:
        self._core = core
        self._fn = fn
        self._loop = loop
        self._is_async = asyncio.iscoroutinefunction(fn)
        self._c: Any = None
        self._delivered = 0
        self._dropped = 0
        handle = ffi.new_handle(self)
        _handles[id(self)] = handle
        subp = ffi.new("tasker_subscription **")
        core.lock.acquire()
        try:
            ptr = core.live_ptr()
            rc = lib.tasker_subscribe(
                subp, ptr, mask, buffer_events, lib._tpy_event, handle, lib._tpy_event_free
            )
            if rc != lib.TASKER_OK:
                _handles.pop(id(self), None)
                raise error_from_last(rc)
            self._c = subp[0]
            core.subscriptions.add(self)
        finally:
            core.unlock()

    def _deliver(self, event: Event) -> None:
        self._delivered += 1  # only the subscription's thread writes it
        loop = self._loop
        if loop is None:
            result = self._fn(event)
            if asyncio.iscoroutine(result):
                result.close()
                raise TypeError("an async event callback needs a loop (subscribe inside one)")
            return
        try:
            loop.call_soon_threadsafe(self._run_on_loop, event)
        except RuntimeError:
            pass  # the loop is closed: nobody listens any more

    def _run_on_loop(self, event: Event) -> None:
        try:
            result = self._fn(event)
            if self._is_async or asyncio.iscoroutine(result):
                asyncio.ensure_future(result)
        except Exception:
            log.exception("tasker: event callback failed")

    @property
    def delivered(self) -> int:
        """Events handed to the callback so far."""
        return self._delivered

    @property
    def dropped(self) -> int:
        """Events dropped because the buffer was full (as of close, once closed)."""
        c = self._c
        return int(lib.tasker_subscription_dropped(c)) if c is not None else self._dropped

    @property
    def closed(self) -> bool:
        return self._c is None

    def close(self) -> None:
        """Delivers what is buffered, then stops (idempotent)."""
        c = self._c
        if c is None:
            return
        if in_event_callback():
            raise RuntimeError("a subscription cannot be closed from an event callback")
        self._dropped = int(lib.tasker_subscription_dropped(c))
        self._c = None
        self._core.subscriptions.discard(self)
        # Not under the coordinator's lock: delivering the buffered events
        # may run callbacks that call into the coordinator.
        lib.tasker_unsubscribe(c)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class EventStream:
    """Events as an async iterator: ``async for event in app.events(): ...``.

    Events are queued on the loop that created the stream; close it (or use
    ``async with``) to unsubscribe.
    """

    def __init__(self, core: "_Core", mask: int, buffer_events: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: "asyncio.Queue[Optional[Event]]" = asyncio.Queue()
        self._sub = Subscription(core, self._queue.put_nowait, mask, buffer_events, self._loop)

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> Event:
        if self._sub.closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def get(self, timeout: Optional[float] = None) -> Event:
        """The next event; raises asyncio.TimeoutError after `timeout` seconds."""
        event = await asyncio.wait_for(self._queue.get(), timeout)
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        self._sub.close()
        self._queue.put_nowait(None)

    async def __aenter__(self) -> "EventStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    @property
    def dropped(self) -> int:
        return self._sub.dropped


class HttpServer:
    """The coordinator's HTTP endpoint: /health/live, /health/ready, /metrics,
    /status.json and a status page.  Created by :meth:`Coordinator.serve_http`."""

    def __init__(self, core: "_Core", host: Optional[str], port: int) -> None:
        self._core = core
        outp = ffi.new("tasker_http **")
        core.lock.acquire()
        try:
            rc = lib.tasker_http_start(
                outp, core.live_ptr(), host.encode("utf-8") if host else NULL, int(port)
            )
            if rc != lib.TASKER_OK:
                raise error_from_last(rc)
            self._c: Any = outp[0]
            core.http_servers.add(self)
        finally:
            core.unlock()
        self.host = host or "127.0.0.1"
        self.port = int(lib.tasker_http_port(self._c))

    @property
    def url(self) -> str:
        return "http://%s:%d" % (self.host, self.port)

    def stop(self) -> None:
        """Stops serving (idempotent).  Closing the coordinator stops it too."""
        c = self._c
        if c is None:
            return
        self._c = None
        self._core.http_servers.discard(self)
        lib.tasker_http_stop(c)

    def __enter__(self) -> "HttpServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return "<tasker.HttpServer %s%s>" % (self.url, "" if self._c is not None else " stopped")
