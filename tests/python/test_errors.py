"""Bad templates and bad arguments give clear, structured exceptions."""

import json

import pytest

import tasker
from _pg import both_stores


def _reason(exc_info):
    return exc_info.value.context.get("reason")


@both_stores
def test_cycle_reports_path(app):
    with pytest.raises(tasker.TemplateError) as ei:
        app.template("e/cycle@1", steps={"a": ["c"], "b": ["a"], "c": ["b"]})
    err = ei.value
    assert _reason(ei) == "cycle"
    cycle = err.context["cycle"]
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert err.code == tasker._lib.TASKER_ETEMPLATE
    assert err.code_name == "TASKER_ETEMPLATE"
    assert err.category == "template"
    assert isinstance(err, tasker.Error) and isinstance(err, ValueError)
    assert "cycle" in str(err)


@both_stores
def test_unknown_dependency(app):
    with pytest.raises(tasker.TemplateError) as ei:
        app.template("e/unknown@1", steps={"a": ["ghost"]})
    assert _reason(ei) == "unknown_dependency"
    assert ei.value.context.get("step") == "a"


@both_stores
def test_duplicate_step(app):
    doc = {"namespace": "e", "name": "dup", "steps": [{"name": "a"}, {"name": "a"}]}
    with pytest.raises(tasker.TemplateError) as ei:
        app.template(doc)
    assert _reason(ei) == "duplicate_step"


@pytest.mark.parametrize(
    "doc,reason",
    [
        ({"namespace": "e/x", "name": "n", "steps": [{"name": "a"}]}, "bad_name"),
        ({"namespace": "e", "name": "n", "steps": []}, "empty"),
        ({"namespace": "e", "name": "n", "steps": [{"name": "a", "colour": "red"}]}, "unknown_key"),
        ({"namespace": "e", "name": "n",
          "steps": [{"name": "a", "retry": {"max_attempts": 0}}]}, "bad_retry_policy"),
    ],
)
@both_stores
def test_rejected_templates(app, doc, reason):
    with pytest.raises(tasker.TemplateError) as ei:
        app.template(doc)
    assert _reason(ei) == reason, ei.value.context


@both_stores
def test_malformed_json_text(app):
    with pytest.raises(tasker.TemplateError) as ei:
        app.template('{"namespace": "e", "name": ')
    assert _reason(ei) == "malformed_json"


@both_stores
def test_not_a_template(app):
    with pytest.raises(tasker.InvalidArgument):
        app.template("just some words")
    with pytest.raises(TypeError):
        app.template(42)
    with pytest.raises(tasker.InvalidArgument):
        app.template("e/bad@1", steps={"a": 3})


@both_stores
def test_same_template_twice_is_noop_but_different_steps_conflict(app):
    app.template("e/t@1", steps={"a": []})
    app.template("e/t@1", steps={"a": []})
    with pytest.raises(tasker.AlreadyExists):
        app.template("e/t@1", steps={"a": [], "b": ["a"]})


@both_stores
def test_unknown_template(app):
    with pytest.raises(tasker.NotFound) as ei:
        app.submit("e/missing")
    assert ei.value.code == tasker._lib.TASKER_ENOTFOUND
    with pytest.raises(tasker.NotFound):
        app.run_sync("e/missing@7")


# Memory store only: on PostgreSQL a process that registered no handler at
# all is a producer whose tasks run on workers elsewhere, so creating the
# task is allowed there (docs/python.md, "Running workers against PostgreSQL").
def test_missing_handler(app):
    app.template("e/nohandler@1", steps={"orphan": []})
    with pytest.raises(tasker.HandlerNotFound) as ei:
        app.submit("e/nohandler")
    assert "orphan" in str(ei.value)


@both_stores
def test_bad_task_arguments(app):
    app.register_handler("a", lambda step: None)
    app.template("e/args@1", steps={"a": []})
    with pytest.raises(tasker.InvalidArgument):
        app.submit("e/args", context=[1, 2, 3])
    with pytest.raises(tasker.InvalidArgument):
        app.submit("e/args", context={"x": object()})
    with pytest.raises(tasker.InvalidArgument):
        app.submit("e/args", priority=10**7)
    with pytest.raises(tasker.InvalidArgument):
        app.submit("no-slash")
    with pytest.raises(TypeError):
        app.submit(123)


@both_stores
def test_handler_registration_errors(app):
    app.register_handler("h", lambda step: 1)
    with pytest.raises(tasker.AlreadyExists):
        app.register_handler("h", lambda step: 2)
    app.register_handler("h", lambda step: 3, replace=True)
    with pytest.raises(TypeError):
        app.register_handler("k", "not callable")
    with pytest.raises(tasker.InvalidArgument):
        app.register_handler("", lambda step: 1)
    app.template("e/h@1", steps={"h": []})
    assert app.run_sync("e/h") == {"h": 3}


def test_bad_configuration():
    with pytest.raises(tasker.ConfigError) as ei:
        tasker.Coordinator({"no.such.key": 1})
    assert "no.such.key" in str(ei.value)
    with pytest.raises(tasker.ConfigError):
        tasker.Coordinator({"template.max_steps": -5})
    with pytest.raises(tasker.InvalidArgument):
        tasker.Coordinator(result_mode="pickle")


def test_database_url_reaches_library():
    """The postgres store is selected and configured; until it exists (or
    with nothing listening) opening fails with the library's error."""
    with pytest.raises(tasker.Error) as ei:
        tasker.Coordinator(database_url="postgresql://127.0.0.1:1/none?connect_timeout=1")
    assert ei.value.code is not None
    assert ei.value.message


def test_closed_coordinator_refuses_work():
    app = tasker.Coordinator()
    app.register_handler("a", lambda step: None)
    app.template("e/closed@1", steps={"a": []})
    app.close()
    app.close()  # idempotent
    assert app.closed
    with pytest.raises(tasker.Closed):
        app.submit("e/closed")
    with pytest.raises(tasker.Closed):
        app.template("e/other@1", steps={"a": []})


@both_stores
def test_error_from_step_accessors(app):
    seen = {}

    @app.handler("probe")
    def probe(step):
        with pytest.raises(KeyError):
            step.results["nope"]
        with pytest.raises(tasker.NotFound) as ei:
            step.dependency("nope")
        seen["msg"] = str(ei.value)
        seen["default"] = step.dependency("nope", default="dflt")
        seen["step"] = step
        return None

    app.template("e/probe@1", steps={"probe": []})
    app.run_sync("e/probe")
    assert "no dependency named 'nope'" in seen["msg"]
    assert seen["default"] == "dflt"
    # After its attempt completed, the step handle is no longer usable.
    with pytest.raises(tasker.StateError):
        seen["step"].attempt
    assert seen["step"].name == "probe"


def test_exception_hierarchy():
    for cls in (tasker.InvalidArgument, tasker.TemplateError, tasker.NotFound,
                tasker.StateError, tasker.Closed, tasker.TaskFailed, tasker.HandlerNotFound):
        assert issubclass(cls, tasker.Error)
    assert issubclass(tasker.Timeout, TimeoutError)
    assert issubclass(tasker.RetryableError, tasker.StepError)
    assert issubclass(tasker.PermanentError, tasker.StepError)
    with pytest.raises(ValueError):
        tasker.RetryableError("x", retry_after=-1)
