"""tasker: workflow orchestration with a C core.

Define a template (steps and their dependencies), register handlers (plain
functions or ``async def``), and run tasks::

    import tasker

    app = tasker.Coordinator()

    @app.handler("fetch")
    async def fetch(step):
        return {"rows": [1, 2, 3]}

    @app.handler("total")
    def total(step):
        return sum(step.results["fetch"]["rows"])

    app.template("etl/daily@1", steps={"fetch": [], "total": ["fetch"]})
    print(app.run_sync("etl/daily"))      # {'fetch': {...}, 'total': 6}

See docs/python.md for the whole API.
"""

from ._ffi import BINDING_ABI, ffi as _cffi, lib as _lib  # checks the ABI at import
from ._errors import (
    AlreadyExists,
    Busy,
    Closed,
    ConfigError,
    DatabaseError,
    Error,
    HandlerNotFound,
    InternalError,
    InvalidArgument,
    NotFound,
    NotSupported,
    OutOfMemory,
    PermanentError,
    RetryableError,
    StaleLease,
    StateError,
    StepError,
    SystemCallError,
    TaskCancelled,
    TaskFailed,
    TemplateError,
    Timeout,
    VersionMismatch,
)
from ._step import DependencyResults, Step
from ._observe import EVENT_TYPES, Event, EventStream, HttpServer, Subscription
from ._templates import Template
from ._coordinator import Coordinator, TaskHandle

__version__ = "0.1.0"

ABI_VERSION = BINDING_ABI


def version() -> str:
    """The C library's version string (e.g. ``"0.1.0"``)."""
    return _cffi.string(_lib.tasker_version()).decode()


__all__ = [
    "ABI_VERSION",
    "AlreadyExists",
    "Busy",
    "Closed",
    "ConfigError",
    "Coordinator",
    "DatabaseError",
    "DependencyResults",
    "EVENT_TYPES",
    "Event",
    "EventStream",
    "HttpServer",
    "Subscription",
    "Error",
    "HandlerNotFound",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "NotSupported",
    "OutOfMemory",
    "PermanentError",
    "RetryableError",
    "StaleLease",
    "StateError",
    "Step",
    "StepError",
    "SystemCallError",
    "TaskCancelled",
    "TaskFailed",
    "TaskHandle",
    "Template",
    "TemplateError",
    "Timeout",
    "VersionMismatch",
    "version",
]
