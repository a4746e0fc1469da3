"""Shared fixtures for the Python binding's tests."""

import gc
import os
import sys

import pytest

import tasker

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _pg  # noqa: E402  (needs HERE on sys.path)


@pytest.fixture(scope="session")
def pg_template():
    """A database holding the tasker schema, copied for each test."""
    if _pg.URL is None:
        pytest.skip(_pg.SKIP_REASON)
    name, url = _pg.create_database()
    try:
        _pg.migrate(url)
        yield name
    finally:
        _pg.drop_database(name)


@pytest.fixture
def pg_url(pg_template):
    """The URL of a fresh, migrated database of this test's own."""
    name, url = _pg.create_database(template=pg_template)
    try:
        yield url
    finally:
        _pg.drop_database(name)


@pytest.fixture
def app(request):
    """A fresh coordinator, closed after the test.

    The memory store by default; tests marked with `_pg.both_stores`
    (indirect parametrization) run once with "memory" and once with
    "postgres" (a coordinator on a fresh database of their own).
    """
    store = getattr(request, "param", "memory")
    if store == "memory":
        coord = tasker.Coordinator()
    else:
        coord = tasker.Coordinator(database_url=request.getfixturevalue("pg_url"))
    try:
        yield coord
    finally:
        coord.close()
        gc.collect()


@pytest.fixture
def json_app():
    """A coordinator that records results as JSON."""
    coord = tasker.Coordinator(result_mode="json")
    try:
        yield coord
    finally:
        coord.close()
