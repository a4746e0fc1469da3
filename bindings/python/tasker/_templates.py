"""Template specs: from a dict, JSON text, a JSON/YAML file, or a steps mapping.

The C library validates templates (names, cycles, unknown dependencies, retry
policies, unknown keys); this module only turns the Python-friendly forms into
the template JSON documented in tasker.h, so every rejection carries the
library's structured reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ._errors import InvalidArgument

TemplateSpec = Union[str, "os.PathLike[str]", Mapping[str, Any]]
StepsSpec = Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]

__all__ = ["Template", "parse_ref", "build_template"]


class Template:
    """A registered template: ``namespace/name@version`` and its steps.

    Returned by :meth:`Coordinator.template`; pass it (or its :attr:`id`) to
    :meth:`Coordinator.run` and :meth:`Coordinator.submit`.
    """

    __slots__ = ("namespace", "name", "version", "steps", "_c_ns", "_c_name", "_c_version")

    def __init__(self, namespace: str, name: str, version: str, steps: List[Dict[str, Any]]):
        self.namespace = namespace
        self.name = name
        self.version = version
        self.steps = steps
        # Encoded once: every task creation passes these to C.
        self._c_ns = namespace.encode("utf-8")
        self._c_name = name.encode("utf-8")
        self._c_version = version.encode("utf-8")

    @property
    def id(self) -> str:
        """``"namespace/name@version"``."""
        return "%s/%s@%s" % (self.namespace, self.name, self.version)

    @property
    def step_names(self) -> List[str]:
        """The step names in template order."""
        return [s["name"] for s in self.steps]

    def to_dict(self) -> Dict[str, Any]:
        """The template as the JSON document of tasker.h (a new dict)."""
        return {
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "steps": json.loads(json.dumps(self.steps)),
        }

    def to_json(self) -> str:
        """The template as JSON text."""
        return json.dumps(self.to_dict())

    def __repr__(self) -> str:
        return "<tasker.Template %s, %d steps>" % (self.id, len(self.steps))


def parse_ref(ref: Union[str, Template]) -> Tuple[str, str, Optional[str]]:
    """Splits ``"ns/name"`` or ``"ns/name@version"`` (or a Template)."""
    if isinstance(ref, Template):
        return ref.namespace, ref.name, ref.version
    if not isinstance(ref, str):
        raise TypeError(
            "a template is named by a tasker.Template or a string 'namespace/name[@version]', "
            "not %s" % type(ref).__name__
        )
    ns, sep, rest = ref.partition("/")
    if not sep or not ns or not rest:
        raise InvalidArgument(
            "template reference %r must look like 'namespace/name' or 'namespace/name@version'"
            % ref,
            category="argument",
            context={"reference": ref},
        )
    name, at, version = rest.partition("@")
    if not name or (at and not version):
        raise InvalidArgument(
            "template reference %r must look like 'namespace/name' or 'namespace/name@version'"
            % ref,
            category="argument",
            context={"reference": ref},
        )
    return ns, name, (version if at else None)


def _load_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(
            "cannot read template file %s: %s" % (path, exc),
            category="argument",
            context={"path": str(path)},
        ) from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ImportError(
                "reading YAML templates needs PyYAML: pip install pyyaml "
                "(or pip install './bindings/python[yaml]')"
            ) from exc
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidArgument(
                "template file %s is not valid YAML: %s" % (path, exc),
                category="template",
                context={"path": str(path), "reason": "malformed_yaml"},
            ) from exc
    return text  # JSON: the library parses it and reports errors precisely.


def _normalise_steps(steps: Any, default_retry: Optional[Mapping[str, Any]],
                     default_timeout_ms: Optional[int]) -> Any:
    """Turns a steps mapping into the list form; leaves other shapes to C."""
    if isinstance(steps, Mapping):
        out = []
        for name, spec in steps.items():
            if spec is None:
                step: Dict[str, Any] = {"name": name, "depends_on": []}
            elif isinstance(spec, str):
                step = {"name": name, "depends_on": [spec]}
            elif isinstance(spec, Mapping):
                step = {"name": name}
                step.update(spec)
            elif isinstance(spec, (list, tuple)):
                step = {"name": name, "depends_on": list(spec)}
            else:
                raise InvalidArgument(
                    "step %r: expected a list of dependencies, a dependency name, a dict of "
                    "options or None, not %s" % (name, type(spec).__name__),
                    category="template",
                    context={"step": name, "reason": "bad_step"},
                )
            out.append(step)
        steps = out
    if isinstance(steps, (list, tuple)):
        result = []
        for step in steps:
            if isinstance(step, Mapping):
                step = dict(step)
                if default_retry is not None and "retry" not in step:
                    step["retry"] = dict(default_retry)
                if default_timeout_ms is not None and "timeout_ms" not in step:
                    step["timeout_ms"] = default_timeout_ms
            result.append(step)
        return result
    return steps


def build_template(
    spec: Optional[TemplateSpec],
    steps: Optional[StepsSpec],
    retry: Optional[Mapping[str, Any]],
    timeout_ms: Optional[int],
) -> Tuple[str, Optional[Dict[str, Any]]]:
    """Returns (JSON text for the library, the parsed document or None).

    The document is None when the text could not be parsed in Python; the
    library then reports the problem (malformed_json) itself.
    """
    doc: Any
    if steps is not None:
        if not isinstance(spec, str):
            raise TypeError(
                "with steps=..., the first argument is the template's name "
                "'namespace/name[@version]', not %s" % type(spec).__name__
            )
        ns, name, version = parse_ref(spec)
        doc = {"namespace": ns, "name": name, "steps": steps}
        if version is not None:
            doc["version"] = version
    elif isinstance(spec, Mapping):
        doc = dict(spec)
    elif isinstance(spec, os.PathLike):
        doc = _load_file(Path(spec))
    elif isinstance(spec, str):
        stripped = spec.lstrip()
        if stripped.startswith("{"):
            doc = spec
        elif "\n" not in spec and Path(spec).suffix.lower() in (".json", ".yaml", ".yml"):
            doc = _load_file(Path(spec))
        else:
            raise InvalidArgument(
                "%r is neither template JSON nor a .json/.yaml file; to define a template by "
                "name, pass steps=..." % (spec[:80],),
                category="argument",
            )
    elif spec is None:
        raise TypeError("template() needs a dict, JSON text, a file path, or a name with steps=")
    else:
        raise TypeError("cannot make a template from %s" % type(spec).__name__)

    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError:
            return doc, None
    if not isinstance(doc, Mapping):
        raise InvalidArgument(
            "a template must be a JSON object / mapping, not %s" % type(doc).__name__,
            category="template",
            context={"reason": "malformed_json"},
        )
    doc = dict(doc)
    if "steps" in doc:
        doc["steps"] = _normalise_steps(doc["steps"], retry, timeout_ms)
    try:
        text = json.dumps(doc)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            "template is not JSON-serialisable: %s" % exc, category="template"
        ) from exc
    return text, doc


def template_from_doc(doc: Mapping[str, Any]) -> Template:
    """The Template for a document the library has accepted."""
    steps = [dict(s) for s in doc.get("steps", [])]
    return Template(str(doc["namespace"]), str(doc["name"]), str(doc.get("version", "1")), steps)
