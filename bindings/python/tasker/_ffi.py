"""Loads the compiled extension, checks its ABI, and turns C statuses into exceptions."""

from __future__ import annotations

import json
from typing import Any, Dict, NoReturn

from . import _errors

# The ABI this Python layer is written for.  The C header's TASKER_ABI_VERSION
# is compiled into the extension; both must agree with the library.
BINDING_ABI = 1

_REBUILD = (
    "rebuild the extension from the same checkout as the library: "
    "`pip install --force-reinstall --no-cache-dir ./bindings/python`"
)

try:
    from ._native import ffi, lib  # type: ignore[import-not-found]
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "tasker: the compiled extension tasker._native cannot be loaded (%s); %s" % (exc, _REBUILD)
    ) from exc


def _abi_check() -> None:
    header_abi = int(lib.TASKER_ABI_VERSION)
    if header_abi != BINDING_ABI:
        raise ImportError(
            "tasker: the Python package expects tasker ABI %d but its extension was built "
            "against a header with ABI %d; %s" % (BINDING_ABI, header_abi, _REBUILD)
        )
    rc = lib.tasker_abi_check(header_abi)
    if rc != lib.TASKER_OK:
        err = lib.tasker_error_last()
        detail = ffi.string(err.message).decode("utf-8", "replace")
        raise ImportError(
            "tasker: ABI mismatch: binding built for ABI %d, library reports ABI %d (%s); %s"
            % (header_abi, lib.tasker_abi_version(), detail, _REBUILD)
        )


_abi_check()

NULL = ffi.NULL

for _name, _cls in _errors.CODE_NAMES.items():
    _errors.CODE_CLASSES[int(getattr(lib, _name))] = _cls


def _text(ptr: Any) -> str:
    if ptr == NULL:
        return ""
    return ffi.string(ptr).decode("utf-8", "replace")


def error_from_last(rc: int) -> _errors.Error:
    """Builds the exception for status `rc` from the calling thread's last error.

    Must run on the thread that made the failing call, before any other
    tasker call there (the last error is per OS thread).
    """
    err = lib.tasker_error_last()
    code = rc
    if int(err.code) != rc:
        # The last error is not this call's (e.g. it was never set); trust
        # the status we got.
        message = _text(lib.tasker_strerror(rc))
        context: Dict[str, Any] = {}
        category = "none"
    else:
        message = _text(err.message) or _text(lib.tasker_strerror(rc))
        raw = _text(err.context_json)
        try:
            context = json.loads(raw) if raw else {}
        except ValueError:
            context = {"raw": raw}
        if not isinstance(context, dict):
            context = {"value": context}
        category = _text(lib.tasker_error_category_name(err.category)) or "none"
    cls = _errors.CODE_CLASSES.get(code, _errors.Error)
    name = _text(lib.tasker_strerror(code)).split(":", 1)[0] or None
    return cls(message, code=code, code_name=name, category=category, context=context)


def raise_for(rc: int) -> NoReturn:
    """Raises the exception for a failed call's status `rc`."""
    raise error_from_last(rc)


def check(rc: int) -> None:
    """Raises if `rc` is a failure status; returns None otherwise."""
    if rc < 0:
        raise error_from_last(rc)
