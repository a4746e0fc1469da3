"""The Step object a handler receives, and the registry of in-process results."""

from __future__ import annotations

import itertools
import json
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple

from . import _errors
from ._ffi import NULL, error_from_last, ffi, lib

if TYPE_CHECKING:  # pragma: no cover
    from ._coordinator import _Core, _TaskRec

__all__ = ["Step", "DependencyResults"]

# In-process results (memory store).  A step's result object is stored here
# under a small integer id; the id, cast to void *, is what the C library
# keeps (tasker_step_succeed_pointer) and hands to dependents.  The library
# calls _tpy_free_ptr(id) exactly once when it drops the result (task
# forgotten, coordinator closed, or a failed succeed call).  The registry is
# module-global because that callback receives only the pointer.
_objects: Dict[int, Any] = {}
_next_id = itertools.count(1).__next__

# Objects released by the library wait here until the C call that released
# them has returned: dropping the last reference inside the callback could
# run arbitrary __del__ code (or a garbage collection) while the library is
# inside a call.  Cleared by the binding after its C calls.
_graveyard: List[Any] = []


def _free_ptr_error(exc_type: Any, exc_value: Any, tb: Any) -> None:
    # Runs if _tpy_free_ptr raised, e.g. during interpreter shutdown when the
    # module's globals are gone.  Nothing sensible can be done; never raise
    # into C.
    return None


@ffi.def_extern(onerror=_free_ptr_error)
def _tpy_free_ptr(ptr: Any) -> None:
    obj = _objects.pop(int(ffi.cast("intptr_t", ptr)), None)
    if obj is not None:
        _graveyard.append(obj)


FREE_PTR = lib._tpy_free_ptr


def store_object(value: Any) -> Any:
    """Registers `value` and returns the void * the library will keep for it."""
    oid = _next_id()
    _objects[oid] = value
    return ffi.cast("void *", oid)


def clear_graveyard() -> None:
    if _graveyard:
        _graveyard.clear()


_MISSING = object()


class Step:
    """One attempt of one step of a task, as seen by its handler.

    A handler receives a Step and returns the step's result (any Python
    object; ``None`` for no result) or raises.  The handle is valid while the
    handler runs; after the attempt completes, only :attr:`name`,
    :attr:`task_uuid` and values already read remain available.

    Attributes:
        name: the step's name in the template.
    """

    # _handler, _uuid, _deps and _fn start unset (AttributeError): one Step is
    # made per attempt on the hot path, so __init__ sets only what every step
    # needs.
    __slots__ = ("_c", "_rec", "_core", "name", "_handler", "_uuid", "_deps", "_fn",
                 "__weakref__")
    _handler: str
    _uuid: str
    _deps: Dict[str, Any]
    _fn: Any

    def __init__(self, c: Any, rec: "_TaskRec", core: "_Core", name: str) -> None:
        self._c = c
        self._rec = rec
        self._core = core
        self.name = name

    # -- identity -----------------------------------------------------------

    def _live(self) -> Any:
        c = self._c
        if c is None:
            raise _errors.StateError(
                "step %r: its attempt has completed; the step handle is no longer valid "
                "(read what you need while the handler runs)" % self.name,
                category="state",
            )
        return c

    @property
    def task_uuid(self) -> str:
        """The UUID of the task this step belongs to."""
        return self._rec.uuid

    @property
    def uuid(self) -> str:
        """The step's UUID."""
        try:
            return self._uuid
        except AttributeError:
            self._uuid = ffi.string(lib.tasker_step_uuid(self._live())).decode()
            return self._uuid

    @property
    def handler(self) -> str:
        """The name of the handler running this step."""
        try:
            return self._handler
        except AttributeError:
            self._handler = ffi.string(lib.tasker_step_handler_name(self._live())).decode()
            return self._handler

    @property
    def namespace(self) -> str:
        """The template's namespace."""
        return ffi.string(lib.tasker_step_namespace(self._live())).decode()

    @property
    def template(self) -> str:
        """The template's name."""
        return ffi.string(lib.tasker_step_template_name(self._live())).decode()

    @property
    def attempt(self) -> int:
        """The attempt number, 1 for the first attempt."""
        return int(lib.tasker_step_attempt(self._live()))

    @property
    def max_attempts(self) -> int:
        """The step's attempt budget (from its retry policy)."""
        return int(lib.tasker_step_max_attempts(self._live()))

    # -- inputs ------------------------------------------------------------

    @property
    def context(self) -> Dict[str, Any]:
        """The task's context (its JSON input) as a dict.

        Parsed once per task and shared by the task's steps in this process:
        treat it as read-only.
        """
        rec = self._rec
        ctx = rec.context
        if ctx is None:
            lenp = ffi.new("size_t *")
            p = lib.tasker_step_context(self._live(), lenp)
            ctx = json.loads(ffi.unpack(p, lenp[0])) if p != NULL and lenp[0] else {}
            rec.context = ctx
        return ctx

    @property
    def dependencies(self) -> Tuple[str, ...]:
        """The names of this step's direct dependencies."""
        c = self._live()
        n = lib.tasker_step_dependency_count(c)
        return tuple(ffi.string(lib.tasker_step_dependency_name(c, i)).decode() for i in range(n))

    @property
    def results(self) -> "DependencyResults":
        """The results of this step's dependencies, by step name.

        ``step.results["fetch"]`` is the value the ``fetch`` step returned.
        In the memory store that is the very object it returned (no copy).
        """
        return DependencyResults(self)

    def dependency(self, name: str, default: Any = _MISSING) -> Any:
        """The result of dependency `name`; `default` if given and `name` is not one."""
        try:
            deps: Optional[Dict[str, Any]] = self._deps
        except AttributeError:
            deps = None
        if deps is not None and name in deps:
            return deps[name]
        try:
            value = self._fetch(name)
        except _errors.NotFound:
            if default is _MISSING:
                raise
            return default
        if deps is None:
            deps = {}
            self._deps = deps
        deps[name] = value
        return value

    def _fetch(self, name: str) -> Any:
        c = self._live()
        ptrp = ffi.new("void **")
        jsonp = ffi.new("const char **")
        lenp = ffi.new("size_t *")
        kind = lib.tpy_step_dependency(ptrp, jsonp, lenp, c, name.encode("utf-8"))
        if kind == 1:
            oid = int(ffi.cast("intptr_t", ptrp[0]))
            try:
                return _objects[oid]
            except KeyError:
                raise _errors.Closed(
                    "step %r: the result of %r was released (coordinator closed?)"
                    % (self.name, name),
                    category="state",
                ) from None
        if kind == 2:
            return json.loads(ffi.unpack(jsonp[0], lenp[0])) if lenp[0] else None
        err = error_from_last(kind)
        if isinstance(err, _errors.NotFound):
            err = _errors.NotFound(
                "step %r has no dependency named %r (its dependencies: %s)"
                % (self.name, name, ", ".join(self.dependencies) or "none"),
                code=err.code,
                code_name=err.code_name,
                category=err.category,
                context=err.context,
            )
        raise err

    def __repr__(self) -> str:
        return "<tasker.Step %s of task %s%s>" % (
            self.name,
            self._rec.uuid,
            "" if self._c is not None else " (completed)",
        )


class DependencyResults(Mapping[str, Any]):
    """Read-only mapping of dependency name -> result, fetched on first use."""

    __slots__ = ("_step",)

    def __init__(self, step: Step) -> None:
        self._step = step

    def __getitem__(self, name: str) -> Any:
        try:
            return self._step.dependency(name)
        except _errors.NotFound as exc:
            raise KeyError(name) from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self._step.dependencies)

    def __len__(self) -> int:
        return int(lib.tasker_step_dependency_count(self._step._live()))

    def __repr__(self) -> str:
        return "<tasker.DependencyResults of %s: %s>" % (self._step.name, list(self))
