"""Exceptions raised by tasker, and the ones handlers raise to steer retries."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Type

__all__ = [
    "Error",
    "InvalidArgument",
    "OutOfMemory",
    "NotFound",
    "AlreadyExists",
    "StateError",
    "TemplateError",
    "Timeout",
    "Closed",
    "StaleLease",
    "VersionMismatch",
    "HandlerNotFound",
    "ConfigError",
    "DatabaseError",
    "Busy",
    "NotSupported",
    "InternalError",
    "SystemCallError",
    "TaskFailed",
    "TaskCancelled",
    "StepError",
    "RetryableError",
    "PermanentError",
]


class Error(Exception):
    """Base class of every error tasker raises.

    Attributes:
        code: the C status code (a negative ``TASKER_E*`` value), or ``None``
            for errors that do not come from a C call (e.g. :class:`TaskFailed`).
        code_name: the code's name, e.g. ``"TASKER_ETEMPLATE"``.
        category: the error's category (``"argument"``, ``"template"``, ...).
        message: the human-readable message.
        context: structured details (a dict), e.g. ``{"reason": "cycle",
            "cycle": ["a", "b", "a"]}`` for a rejected template.
    """

    code: Optional[int] = None
    code_name: Optional[str] = None

    def __init__(
        self,
        message: str,
        *,
        code: Optional[int] = None,
        code_name: Optional[str] = None,
        category: str = "none",
        context: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if code_name is not None:
            self.code_name = code_name
        self.category = category
        self.context: Dict[str, Any] = dict(context or {})

    def __str__(self) -> str:
        if self.context:
            return "%s %s" % (self.message, _compact(self.context))
        return self.message


def _compact(obj: Any) -> str:
    import json

    try:
        return json.dumps(obj, separators=(",", ":"), sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(obj)


class InvalidArgument(Error, ValueError):
    """TASKER_EINVAL: an argument is missing, out of range or malformed."""


class OutOfMemory(Error, MemoryError):
    """TASKER_ENOMEM: an allocation failed; nothing was changed."""


class NotFound(Error, LookupError):
    """TASKER_ENOTFOUND: no such task, template, step or key."""


class AlreadyExists(Error):
    """TASKER_EEXIST: already registered with different content."""


class StateError(Error):
    """TASKER_ESTATE: the operation is illegal in the current state."""


class TemplateError(Error, ValueError):
    """TASKER_ETEMPLATE: a template was rejected; ``context["reason"]`` says why."""


class Timeout(Error, TimeoutError):
    """TASKER_ETIMEOUT, or a wait that ran out of time."""


class Closed(Error):
    """TASKER_ECLOSED: the coordinator is closed or stopping."""


class StaleLease(Error):
    """TASKER_ESTALE: the step's lease was lost; the completion was refused."""


class VersionMismatch(Error, ImportError):
    """TASKER_EVERSION: the binding and the C library disagree on the ABI."""


class HandlerNotFound(Error, LookupError):
    """TASKER_EHANDLER: no handler is registered under that name."""


class ConfigError(Error, ValueError):
    """TASKER_ECONFIG: a bad configuration key or value."""


class DatabaseError(Error):
    """TASKER_EDATABASE: the store's database failed."""


class Busy(Error):
    """TASKER_EBUSY: the resource is in use."""


class NotSupported(Error):
    """TASKER_ENOTSUP: not supported by this store or build."""


class InternalError(Error):
    """TASKER_EINTERNAL: a bug in tasker; please report it."""


class SystemCallError(Error, OSError):
    """TASKER_EIO: an operating-system call failed."""


# C status code -> exception class.  Filled with the codes' values at import
# (the values come from the compiled header, not from literals here).
CODE_CLASSES: Dict[int, Type[Error]] = {}

CODE_NAMES = {
    "TASKER_EINVAL": InvalidArgument,
    "TASKER_ENOMEM": OutOfMemory,
    "TASKER_ENOTFOUND": NotFound,
    "TASKER_EEXIST": AlreadyExists,
    "TASKER_ESTATE": StateError,
    "TASKER_ETEMPLATE": TemplateError,
    "TASKER_ETIMEOUT": Timeout,
    "TASKER_ECLOSED": Closed,
    "TASKER_ESTALE": StaleLease,
    "TASKER_EVERSION": VersionMismatch,
    "TASKER_EHANDLER": HandlerNotFound,
    "TASKER_ECONFIG": ConfigError,
    "TASKER_EDATABASE": DatabaseError,
    "TASKER_EBUSY": Busy,
    "TASKER_ENOTSUP": NotSupported,
    "TASKER_EINTERNAL": InternalError,
    "TASKER_EIO": SystemCallError,
}


class TaskFailed(Error):
    """A task ended in a state other than ``complete``.

    Attributes:
        task_uuid: the task's UUID.
        state: the final state (``"error"``, ``"cancelled"``, ...).
        errors: one entry per step that failed for good, each a dict with
            ``step``, ``attempts`` and ``error`` (the last error record:
            ``class``, ``message``, ``retryable``, ``context``, ``at``).
        info: the whole task as returned by :meth:`TaskHandle.info`, or
            ``None`` if the task could no longer be read.
    """

    def __init__(
        self,
        task_uuid: str,
        state: str,
        errors: List[Dict[str, Any]],
        info: Optional[Dict[str, Any]] = None,
    ) -> None:
        if errors:
            first = errors[0]
            err = first.get("error") or {}
            detail = "; step %r failed after %s attempt(s): %s: %s" % (
                first.get("step"),
                first.get("attempts"),
                err.get("class"),
                err.get("message"),
            )
            if len(errors) > 1:
                detail += " (and %d more failed step(s))" % (len(errors) - 1)
        else:
            detail = ""
        super().__init__(
            "task %s ended %s%s" % (task_uuid, state, detail),
            category="task",
            context={"task": task_uuid, "state": state},
        )
        self.task_uuid = task_uuid
        self.state = state
        self.errors = errors
        self.info = info

    def __str__(self) -> str:
        return self.message


class TaskCancelled(TaskFailed):
    """The task was cancelled before it completed."""


class StepError(Exception):
    """Base of the exceptions a handler raises to say how its step failed.

    Any other exception a handler raises is recorded as a *retryable* failure
    with the exception's class, message and traceback.

    Args:
        message: what went wrong.
        context: extra JSON-serialisable details stored in the step's error
            record (``task.steps[i]["errors"][j]["context"]``).
    """

    retryable = True

    def __init__(self, message: str = "", *, context: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.context: Dict[str, Any] = dict(context or {})


class RetryableError(StepError):
    """The attempt failed but may succeed later.

    Args:
        message: what went wrong.
        retry_after: seconds to wait before the next attempt; overrides the
            template's backoff (still capped by the step's ``max_ms``).
            ``None`` keeps the backoff policy.
        context: extra details for the error record.
    """

    retryable = True

    def __init__(
        self,
        message: str = "",
        *,
        retry_after: Optional[float] = None,
        context: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(message, context=context)
        if retry_after is not None:
            if retry_after < 0:
                raise ValueError("retry_after must be >= 0 seconds")
        self.retry_after = retry_after


class PermanentError(StepError):
    """The step failed for good: no further attempt is made."""

    retryable = False
