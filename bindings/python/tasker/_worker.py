"""``python -m tasker worker``: runs an app's Python handlers against PostgreSQL.

The app
-------
``--app MODULE:ATTR`` names a module importable from the current directory
and an attribute in it that is a :class:`tasker.Coordinator`, or a callable
taking no arguments that returns one.  That coordinator *declares* the
work: its handlers (``@app.handler``), its templates (``app.template``) and
the configuration it was built with.  The worker opens a coordinator of its
own on ``--database-url`` (the postgres store), registers the same
templates and handlers there, and serves them until SIGTERM or SIGINT.  So
one module serves both as the worker's app and, with
``tasker.Coordinator(database_url=...)`` elsewhere, as the producer's
reference; the app's own coordinator (usually the memory store) runs
nothing.  Before the module is imported the URL is exported as
``TASKER_DATABASE_URL``, so a module that builds its coordinator from the
environment sees the same database.

Any number of workers on any number of hosts may serve one database: each
claims steps with ``FOR UPDATE SKIP LOCKED`` and holds them under a lease
the library renews; there is no other process to run.

Concurrency
-----------
``--concurrency K`` bounds the steps this worker holds at once (claimed and
not yet completed): plain-function handlers run on K threads, and the
worker stops claiming while K steps are in flight, so idle workers get the
rest and a shutdown has at most K steps to finish or give back.

Shutdown
--------
On SIGTERM or SIGINT the worker stops claiming, gives steps claimed but not
started back to the queue at close, and waits up to ``--drain-timeout``
seconds for the running ones to complete.  It then closes the coordinator
(pending completions are committed, leases of steps still held are
released so another worker runs them at once, the final log lines are
written) and exits 0, or 3 when steps were still running after the drain.
A second signal ends the drain at once.

Exit status: 0 clean shutdown, 1 the worker failed while running, 2 bad
arguments or the app / database could not be set up, 3 the drain timed out
(130: interrupted before it started serving).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import importlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, TextIO, Tuple

from . import _coordinator as _co
from ._coordinator import Coordinator, _Driver
from ._errors import Error
from ._step import Step
from ._templates import template_from_doc

__all__ = ["main", "EXIT_OK", "EXIT_FAIL", "EXIT_USAGE", "EXIT_DRAIN_TIMEOUT"]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_DRAIN_TIMEOUT = 3  # the same code as `tasker serve`

DEFAULT_DRAIN_TIMEOUT = 30.0
LOG_LEVELS = ("off", "error", "warn", "info", "debug")
# How often a drain checks whether the running steps have completed (s).
DRAIN_POLL = 0.02
# How soon a worker at its limit looks again when only completions being
# recorded hold it there (s).
RECHECK = 0.002

PROG = "python -m tasker worker"

DESCRIPTION = """\
Runs the Python handlers of an app against the postgres store, as one of any
number of workers on any number of hosts sharing the database.

MODULE:ATTR names a module importable from the current directory and an
attribute that is a tasker.Coordinator (or a callable returning one) on which
the handlers and templates are declared; the worker serves them on its own
coordinator opened on --database-url.  The schema must exist (`tasker
migrate --database-url URL`).

Logs are JSON lines (time, level, event, task_uuid, step_uuid, ...) on
stderr.  On SIGTERM or SIGINT the worker stops claiming, lets running steps
finish for up to --drain-timeout seconds, gives the rest back, and exits.
"""

EPILOG = """\
exit status: 0 clean shutdown; 1 the worker failed while running; 2 bad
arguments, or the app or the database could not be set up; 3 steps were
still running when the drain timed out (their leases were released).

example:
  TASKER_DATABASE_URL=postgresql://localhost/shop \\
      python -m tasker worker --app shop.tasks:app --concurrency 8
"""


class UsageError(Exception):
    """A problem with the command line, the app or the database: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, never a traceback
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--database-url",
        metavar="URL",
        default=None,
        help="PostgreSQL connection string or postgresql:// URL "
        "(default: $TASKER_DATABASE_URL)",
    )
    p.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        default=None,
        help="the tasker.Coordinator declaring handlers and templates (default: $TASKER_APP)",
    )
    p.add_argument(
        "--namespace",
        metavar="N",
        action="append",
        default=None,
        help="serve only the templates of namespace N and the handlers they use, "
        "and claim only N's steps (repeatable; default: every template of the app)",
    )
    p.add_argument(
        "--concurrency",
        metavar="K",
        type=_positive_int,
        default=None,
        help="most steps held at once; plain functions run on K threads "
        "(default: min(32, CPUs + 4))",
    )
    p.add_argument(
        "--drain-timeout",
        metavar="SECONDS",
        type=_non_negative_float,
        default=DEFAULT_DRAIN_TIMEOUT,
        help="how long running steps may take to finish after SIGTERM/SIGINT "
        "(default: %g)" % DEFAULT_DRAIN_TIMEOUT,
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="JSON log level (default: info; debug logs every step)",
    )
    p.add_argument(
        "--log-sink",
        metavar="WHERE",
        default="stderr",
        help="stderr (default), stdout, or a file to append to",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="`key = value` lines of tasker configuration (see tasker.h), "
        "instead of the app's config_file",
    )
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="settings",
        help="one configuration key, e.g. --set postgres.lease_ms=10000 (repeatable)",
    )
    p.add_argument(
        "--http-port",
        metavar="PORT",
        type=_port,
        default=None,
        help="serve /health/live, /health/ready and /metrics on 127.0.0.1:PORT "
        "(0: any free port, logged)",
    )
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number >= 1, got %r" % text)
    if v < 1 or v > 4096:
        raise argparse.ArgumentTypeError("expected 1..4096, got %d" % v)
    return v


def _non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of seconds, got %r" % text)
    if not v >= 0 or v > 86400:
        raise argparse.ArgumentTypeError("expected 0..86400 seconds, got %r" % text)
    return v


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a port number, got %r" % text)
    if v < 0 or v > 65535:
        raise argparse.ArgumentTypeError("expected 0..65535, got %d" % v)
    return v


# -- logging -------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The connection string without its password (for logs and messages)."""
    if re.match(r"^postgres(ql)?://", url):
        return re.sub(r"^(postgres(?:ql)?://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)


class JsonLog:
    """The worker's own log lines, in the format of the library's (obs/log.c):
    one JSON object per line with time, level and event."""

    _RANK = {name: i for i, name in enumerate(LOG_LEVELS)}

    def __init__(self, level: str, sink: str) -> None:
        self.rank = self._RANK[level]
        self.lock = threading.Lock()
        self.owned = False
        if sink == "stderr":
            self.f: TextIO = sys.stderr
        elif sink == "stdout":
            self.f = sys.stdout
        else:
            self.f = open(sink, "a", encoding="utf-8")
            self.owned = True

    def enabled(self, level: str) -> bool:
        return self.rank > 0 and self._RANK[level] <= self.rank

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        if not self.enabled(level):
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        rec: Dict[str, Any] = {
            "time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": level,
            "event": event,
        }
        rec.update(fields)
        line = json.dumps(rec, default=str, separators=(",", ":")) + "\n"
        with self.lock:
            try:
                self.f.write(line)
                self.f.flush()
            except (OSError, ValueError):
                pass  # a closed or full sink must not stop the worker

    def close(self) -> None:
        if self.owned:
            self.f.close()


# -- loading the app -------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_app(spec: str) -> Coordinator:
    """Imports MODULE:ATTR and returns the Coordinator it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr or not re.fullmatch(
        r"[A-Za-z_][\w.]*", module_name
    ) or not re.fullmatch(r"[A-Za-z_][\w.]*", attr):
        raise UsageError(
            "--app must be MODULE:ATTR (e.g. shop.tasks:app), got %r" % spec
        )
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UsageError(
                "cannot import module %r for --app (looked in %s and sys.path)" % (module_name, cwd)
            ) from None
        raise UsageError(
            "importing module %r failed: %s" % (module_name, _one_line(exc))
        ) from None
    except BaseException as exc:  # the module's own code failed: say where
        where = ""
        tb = traceback.extract_tb(exc.__traceback__)
        if tb:
            last = tb[-1]
            where = " at %s:%d" % (last.filename, last.lineno or 0)
        raise UsageError(
            "importing module %r raised %s%s: %s"
            % (module_name, type(exc).__name__, where, _one_line(exc))
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError("module %r has no attribute %r (--app %s)" % (module_name, attr, spec)) from None
    if not isinstance(obj, Coordinator) and callable(obj):
        try:
            obj = obj()
        except BaseException as exc:
            raise UsageError(
                "calling %s() raised %s: %s" % (spec, type(exc).__name__, _one_line(exc))
            ) from None
    if not isinstance(obj, Coordinator):
        raise UsageError(
            "%s is a %s, not a tasker.Coordinator (or a callable returning one)"
            % (spec, type(obj).__name__)
        )
    return obj


def _parse_settings(items: Sequence[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError("--set needs KEY=VALUE, got %r" % item)
        out[key.strip()] = value.strip()
    return out


# Keys the worker decides itself; an app's value for them is not replayed.
_WORKER_KEYS = ("store", "database.url", "log.level", "log.sink")


def select_work(
    app: Coordinator, namespaces: Optional[Sequence[str]]
) -> Tuple[List[str], Dict[str, Tuple[Callable[[Step], Any], bool]]]:
    """The app's templates (JSON texts) and handlers this worker serves."""
    decl = app._declaration
    handlers = dict(app._core.handlers)
    texts: List[str] = []
    used: Set[str] = set()
    seen_ns: Set[str] = set()
    for text in decl["templates"]:
        tmpl = template_from_doc(json.loads(text))
        seen_ns.add(tmpl.namespace)
        if namespaces and tmpl.namespace not in namespaces:
            continue
        texts.append(text)
        for s in tmpl.steps:
            used.add(str(s.get("handler") or s["name"]))
    if namespaces:
        missing = [n for n in namespaces if n not in seen_ns]
        if missing:
            raise UsageError(
                "the app declares no template in namespace %s (it has: %s)"
                % (", ".join(repr(n) for n in missing), ", ".join(sorted(seen_ns)) or "none")
            )
        handlers = {name: entry for name, entry in handlers.items() if name in used}
    if not handlers:
        raise UsageError("the app declares no handlers: register them with @app.handler")
    return texts, handlers


# -- bounded claiming --------------------------------------------------------------


class _Gate:
    """Counts the steps this worker holds, to stop claiming at the limit.

    Held = queued for the thread pool + running a handler.  An async
    handler starts during the claim itself (the driver drives coroutines
    eagerly), so for async steps "running" starts with the claim.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.running = 0
        self.paused = False
        self.resume_pending = False
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.driver: Optional["_WorkerDriver"] = None
        # Steps whose handler returned but whose completion may not have
        # reached the library yet (sync completions are batched); a drain
        # waits for them too.
        self.finishing: Deque[Step] = collections.deque()
        self.succeeded = 0
        self.failed = 0

    def enter(self, step: Step) -> None:
        with self.lock:
            self.running += 1

    def leave(self, step: Step, ok: bool) -> None:
        with self.lock:
            self.running -= 1
            if ok:
                self.succeeded += 1
            else:
                self.failed += 1
            self.finishing.append(step)
            wake = self.paused and not self.resume_pending
            if wake:
                self.resume_pending = True
        if wake and self.loop is not None and self.driver is not None:
            try:
                self.loop.call_soon_threadsafe(self.driver.resume)
            except RuntimeError:
                pass  # the loop is closed: shutting down

    def _completing(self) -> int:
        # Lock held.  A step stays held until its completion is recorded
        # (the handle is then cleared), not merely until its handler returns.
        finishing = self.finishing
        while finishing and finishing[0]._c is None:
            finishing.popleft()
        return sum(1 for s in finishing if s._c is not None)

    def room(self, queued: int) -> Tuple[int, int]:
        """(steps the next claim may take, completions still in progress);
        pauses claiming when there is no room."""
        with self.lock:
            completing = self._completing()
            room = self.limit - self.running - queued - completing
            if room <= 0:
                self.paused = True
            return room, completing

    def unfinished(self) -> int:
        """Steps still running or whose completion is not yet recorded."""
        with self.lock:
            return self.running + self._completing()


class _WorkerDriver(_Driver):
    """The binding's poll-mode driver, claiming no more than the gate allows:
    each wake-up sets the driver's claim_batch and max_per_wake to the room
    left.  The loop thread is the only one that claims, so this is race-free.
    """

    def __init__(self, core: Any, loop: asyncio.AbstractEventLoop, gate: _Gate) -> None:
        super().__init__(core, loop)
        self.gate = gate
        self.stopped = False
        self.reading = True
        self.cap = self.claim_batch  # the driver's buffers hold this many
        self.recheck: Optional[asyncio.TimerHandle] = None

    def _recheck(self) -> None:
        self.recheck = None
        self.resume()

    def _queued(self) -> int:
        pool = self.core.pool
        return len(pool.items) if pool is not None else 0

    def on_readable(self) -> None:
        if not self.attached:
            return
        if self.stopped:
            self._pause()
            return
        room, completing = self.gate.room(self._queued())
        if room <= 0:
            self._pause()
            if completing and self.recheck is None:
                # Only completions in flight hold the room: nothing will call
                # leave() for them, so look again shortly.
                self.recheck = self.loop.call_later(RECHECK, self._recheck)
            return
        if not self.reading:
            self._resume_reader()
        self.claim_batch = self.max_per_wake = min(room, self.cap)
        _Driver.on_readable(self)

    def _pause(self) -> None:
        # Unconditional: the base class re-adds the reader on its own after
        # a failed claim, so `reading` is only a hint.
        if self.attached and not self.loop.is_closed():
            self.loop.remove_reader(self.core.fd)
        self.reading = False

    def _resume_reader(self) -> None:
        if not self.reading and self.attached and not self.loop.is_closed():
            self.loop.add_reader(self.core.fd, self.on_readable)
            self.reading = True

    def resume(self) -> None:
        """Claims again once a held step has finished (runs on the loop)."""
        gate = self.gate
        with gate.lock:
            gate.resume_pending = False
            gate.paused = False
        if self.stopped or not self.attached:
            return
        self._resume_reader()
        self.on_readable()

    def stop_claiming(self) -> None:
        self.stopped = True
        self._pause()
        if self.recheck is not None:
            self.recheck.cancel()
            self.recheck = None


def _wrap(fn: Callable[[Step], Any], is_async: bool, gate: _Gate) -> Callable[[Step], Any]:
    """The handler as the worker registers it: counted in and out by the gate."""
    if is_async:

        async def run_async(step: Step) -> Any:
            gate.enter(step)
            ok = False
            try:
                value = await fn(step)
                ok = True
                return value
            finally:
                gate.leave(step, ok)

        run_async.__name__ = getattr(fn, "__name__", "handler")
        return run_async

    def run_sync(step: Step) -> Any:
        gate.enter(step)
        ok = False
        try:
            value = fn(step)
            ok = True
            return value
        finally:
            gate.leave(step, ok)

    run_sync.__name__ = getattr(fn, "__name__", "handler")
    return run_sync


# -- the worker ----------------------------------------------------------------------


class Worker:
    def __init__(
        self,
        coord: Coordinator,
        gate: _Gate,
        log: JsonLog,
        drain_timeout: float,
        http_port: Optional[int],
    ) -> None:
        self.coord = coord
        self.gate = gate
        self.log = log
        self.drain_timeout = drain_timeout
        self.http_port = http_port
        self.signals = 0
        self.stop_event: Optional[asyncio.Event] = None
        self.hurry: Optional[asyncio.Event] = None
        self.fatal: Optional[BaseException] = None

    def _on_signal(self, name: str) -> None:
        self.signals += 1
        if self.signals == 1:
            self.log("info", "worker_stopping", signal=name, drain_timeout_s=self.drain_timeout)
            assert self.stop_event is not None
            self.stop_event.set()
        else:
            self.log("warn", "worker_stopping_now", signal=name)
            assert self.hurry is not None
            self.hurry.set()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
        exc = context.get("exception")
        fields: Dict[str, Any] = {"message": context.get("message", "")}
        if exc is not None:
            fields["error_class"] = type(exc).__name__
            fields["error_message"] = _one_line(exc)
        self.log("error", "worker_error", **fields)

    def run(self) -> int:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._on_loop_error)
        try:
            return loop.run_until_complete(self._main(loop))
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=5.0))
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> int:
        self.stop_event = asyncio.Event()
        self.hurry = asyncio.Event()
        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            loop.add_signal_handler(sig, self._on_signal, name)
        core = self.coord._core
        gate = self.gate
        gate.loop = loop
        drv = _WorkerDriver(core, loop, gate)
        gate.driver = drv
        core.driver = drv
        drv.attach()
        http = None
        if self.http_port is not None:
            http = self.coord.serve_http(port=self.http_port)
            self.log("info", "worker_http", url=http.url)
        t0 = time.monotonic()
        self.log(
            "info",
            "worker_started",
            pid=os.getpid(),
            host=socket.gethostname(),
            concurrency=gate.limit,
            handlers=sorted(core.handlers),
        )
        await self.stop_event.wait()

        # 1. Stop claiming.  Steps claimed but not started stay held and are
        #    given back when the coordinator closes.
        drv.stop_claiming()
        pool = core.pool
        not_started = pool.take_queued() if pool is not None else []
        # 2. Let running steps finish.
        deadline = time.monotonic() + self.drain_timeout
        left = gate.unfinished()
        while left and time.monotonic() < deadline and not self.hurry.is_set():
            try:
                await asyncio.wait_for(self.hurry.wait(), DRAIN_POLL)
            except asyncio.TimeoutError:
                pass
            left = gate.unfinished()
        timed_out = left > 0
        if timed_out:
            self.log(
                "warn",
                "worker_drain_timeout",
                steps_running=left,
                drain_timeout_s=self.drain_timeout,
                message="steps still running are released: another worker runs them again",
            )
        else:
            self.log("info", "worker_drained", seconds=round(time.monotonic() - t0, 3))
        # 3. Close: pending completions are committed, every step still held
        #    (not started, or running past the drain) is released, buffered
        #    log lines are written.
        metrics_ok = True
        try:
            self.coord.metrics()  # a last read: fails loudly if the store is gone
        except Error:
            metrics_ok = False
        if http is not None:
            http.stop()
        core.close(release=True)
        for step in not_started:
            c = step._c
            if c is not None:
                # The library released it at close; this frees the handle.
                step._c = None
                _co.lib.tpy_step_fail(c, b"tasker.Closed", b"worker stopped", 1, -1, b"{}")
        self.log(
            "info",
            "worker_stopped",
            exit_code=EXIT_DRAIN_TIMEOUT if timed_out else EXIT_OK,
            steps_succeeded=gate.succeeded,
            steps_failed=gate.failed,
            steps_released=len(not_started) + left,
            uptime_s=round(time.monotonic() - t0, 3),
            store_reachable=metrics_ok,
        )
        return EXIT_DRAIN_TIMEOUT if timed_out else EXIT_OK


def _open(args: argparse.Namespace, app: Coordinator, url: str, concurrency: int) -> Coordinator:
    decl = app._declaration
    config: Dict[str, Any] = {
        k: v for k, v in decl["config"].items() if str(k) not in _WORKER_KEYS
    }
    config.update(_parse_settings(args.settings))
    for key in _WORKER_KEYS:
        if key in config:
            raise UsageError("--set %s: the worker sets it (use --database-url / --log-*)" % key)
    config["log.level"] = args.log_level
    config["log.sink"] = args.log_sink
    if args.namespace:
        # Claims come from these namespaces only, even where another
        # namespace's templates use the same handler names.
        config["postgres.namespaces"] = ",".join(args.namespace)
    try:
        return Coordinator(
            config,
            database_url=url,
            config_file=args.config or decl["config_file"],
            env_prefix=decl["env_prefix"],
            max_threads=concurrency,
            result_mode="json",
        )
    except Error as exc:
        if exc.category == "database" or exc.code_name == "TASKER_EDATABASE":
            raise UsageError(
                "cannot use the database %s: %s" % (redact_url(url), _one_line(exc.message))
            ) from None
        raise UsageError("configuration: %s" % _one_line(exc.message)) from None


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parses `argv`, runs the worker, returns the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print("%s: error: %s (see --help)" % (PROG, exc), file=sys.stderr)
        return EXIT_USAGE
    coord: Optional[Coordinator] = None
    app: Optional[Coordinator] = None
    log: Optional[JsonLog] = None
    try:
        url = args.database_url or os.environ.get("TASKER_DATABASE_URL")
        if not url:
            raise UsageError("no database: pass --database-url URL or set TASKER_DATABASE_URL")
        spec = args.app or os.environ.get("TASKER_APP")
        if not spec:
            raise UsageError("no app: pass --app MODULE:ATTR (or set TASKER_APP)")
        try:
            log = JsonLog(args.log_level, args.log_sink)
        except OSError as exc:
            raise UsageError("--log-sink %s: %s" % (args.log_sink, exc.strerror or exc)) from None
        # The module may build its own coordinator from the environment.
        os.environ["TASKER_DATABASE_URL"] = url
        app = load_app(spec)
        templates, handlers = select_work(app, args.namespace)
        concurrency = args.concurrency or min(32, (os.cpu_count() or 1) + 4)
        coord = _open(args, app, url, concurrency)
        gate = _Gate(concurrency)
        try:
            for text in templates:
                coord.template(text)
            for name, (fn, is_async) in handlers.items():
                coord.register_handler(name, _wrap(fn, is_async, gate))
        except Error as exc:
            raise UsageError("registering the app: %s" % _one_line(exc.message)) from None
    except UsageError as exc:
        print("%s: error: %s" % (PROG, exc), file=sys.stderr)
        if coord is not None:
            coord.close()
        if log is not None:
            log.close()
        return EXIT_USAGE
    worker = Worker(coord, gate, log, args.drain_timeout, args.http_port)
    try:
        return worker.run()
    except Exception as exc:  # a failure while serving: report it, one line
        log("error", "worker_failed", error_class=type(exc).__name__, error_message=_one_line(exc))
        print("%s: error: %s: %s" % (PROG, type(exc).__name__, _one_line(exc)), file=sys.stderr)
        return EXIT_FAIL
    finally:
        coord.close()
        if app is not None and app is not coord:
            app.close()
        log.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return run(argv)
    except KeyboardInterrupt:  # Ctrl-C before the worker started serving
        print("%s: interrupted" % PROG, file=sys.stderr)
        return 130
