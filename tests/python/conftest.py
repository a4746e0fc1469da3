"""Shared fixtures for the Python binding's tests."""

import gc
import os
import sys

import pytest

import tasker

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


@pytest.fixture
def app():
    """A fresh memory-store coordinator, closed after the test."""
    coord = tasker.Coordinator()
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
