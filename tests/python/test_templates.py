"""Templates from dicts, JSON text, JSON and YAML files, and steps mappings."""

import json

import pytest

import tasker
from _pg import both_stores

DOC = {
    "namespace": "tpl",
    "name": "etl",
    "version": "2",
    "steps": [
        {"name": "extract", "handler": "ex", "retry": {"max_attempts": 4, "backoff": "linear",
                                                      "base_ms": 10, "max_ms": 100}},
        {"name": "load", "depends_on": ["extract"], "timeout_ms": 5000},
    ],
}


def _handlers(app):
    app.register_handler("ex", lambda step: [1, 2, 3])
    app.register_handler("load", lambda step: sum(step.results["extract"]))


@both_stores
def test_from_dict(app):
    _handlers(app)
    t = app.template(DOC)
    assert t.id == "tpl/etl@2"
    assert t.step_names == ["extract", "load"]
    assert app.run_sync(t) == {"extract": [1, 2, 3], "load": 6}
    assert app.run_sync("tpl/etl@2")["load"] == 6
    assert app.run_sync("tpl/etl")["load"] == 6  # highest version
    steps = app.submit(t).steps
    assert steps[0]["max_attempts"] == 4 and steps[0]["handler"] == "ex"


@both_stores
def test_from_json_text(app):
    _handlers(app)
    t = app.template(json.dumps(DOC))
    assert t.id == "tpl/etl@2"
    assert app.run_sync(t)["load"] == 6


@both_stores
def test_from_json_file(app, tmp_path):
    _handlers(app)
    path = tmp_path / "etl.json"
    path.write_text(json.dumps(DOC))
    assert app.template(path).id == "tpl/etl@2"
    assert app.template(str(path)).id == "tpl/etl@2"


@both_stores
def test_from_yaml_file(app, tmp_path):
    pytest.importorskip("yaml")
    _handlers(app)
    path = tmp_path / "etl.yaml"
    path.write_text(
        """
namespace: tpl
name: etl_yaml
steps:
  extract:
    handler: ex
    retry: {max_attempts: 2}
  load: [extract]
"""
    )
    t = app.template(path)
    assert t.id == "tpl/etl_yaml@1"
    assert app.run_sync(t) == {"extract": [1, 2, 3], "load": 6}


@both_stores
def test_yaml_errors_are_clear(app, tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "broken.yml"
    path.write_text("namespace: [unclosed\n")
    with pytest.raises(tasker.InvalidArgument) as ei:
        app.template(path)
    assert "not valid YAML" in str(ei.value)
    with pytest.raises(tasker.InvalidArgument):
        app.template(tmp_path / "missing.yaml")


@both_stores
def test_steps_mapping_forms_and_defaults(app):
    for name in ("a", "b", "c", "d"):
        app.register_handler(name, lambda step: step.name)
    t = app.template(
        "tpl/forms@3",
        steps={"a": None, "b": "a", "c": ["a", "b"], "d": {"depends_on": ["c"], "retry": {"max_attempts": 1}}},
        retry={"max_attempts": 7, "backoff": "none"},
    )
    assert t.version == "3"
    h = app.submit(t)
    assert h.get(timeout=10) == {"a": "a", "b": "b", "c": "c", "d": "d"}
    by_name = {s["name"]: s for s in h.steps}
    assert by_name["a"]["max_attempts"] == 7
    assert by_name["d"]["max_attempts"] == 1
    assert by_name["c"]["depends_on"] == ["a", "b"]
    assert t.to_dict()["steps"][1]["depends_on"] == ["a"]
    assert json.loads(t.to_json())["name"] == "forms"


@both_stores
def test_versions_are_distinct(app):
    app.register_handler("v", lambda step: step.template)
    app.template("tpl/ver@1", steps={"v": []})
    app.template("tpl/ver@2", steps={"v": [], "w": {"handler": "v", "depends_on": ["v"]}})
    assert set(app.run_sync("tpl/ver@1")) == {"v"}
    assert set(app.run_sync("tpl/ver@2")) == {"v", "w"}
